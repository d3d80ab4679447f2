/*
 * The runner behind migrated Azkaban jobs of type "java" (Azkaban's JavaJob).
 *
 * Written for airflow-ml-provider (not taken from Azkaban). It follows the documented behaviour of
 * Azkaban's JavaJobRunnerMain with a plain JVM:
 *
 *  - the job's resolved properties are read from the file named by $JOB_PROP_FILE
 *    (java.util.Properties format), the job name from $JOB_NAME;
 *  - "job.class" is instantiated with the first public constructor that exists, in Azkaban's
 *    order: (String, azkaban.utils.Props) or (String, azkaban.common.utils.Props) when that class
 *    is on the job's classpath, (String, java.util.Properties), (String, java.util.Map), (String), ();
 *  - the public no-argument method "method.run" (default "run") is invoked;
 *  - if the object has a public getJobGeneratedProperties() returning Properties, a Map, or an
 *    object with toProperties() (Azkaban's Props), those entries are written as a JSON object to
 *    $JOB_OUTPUT_PROP_FILE, which the children of the job read;
 *  - when the JVM is stopped (SIGTERM) before the run method returns, "method.cancel"
 *    (default "cancel") is invoked if the class has it.
 *
 * Any failure prints one line naming the job and the cause (and the job's own stack trace when the
 * run method threw) and exits with status 1.
 */

import java.io.FileInputStream;
import java.io.InputStream;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.lang.reflect.Constructor;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;

public final class AzkabanJavaJobRunner {
    private static final String[] PROPS_CLASSES = {"azkaban.utils.Props", "azkaban.common.utils.Props"};

    private static volatile boolean finished = false;
    private static volatile Object jobObject = null;

    public static void main(String[] args) {
        String jobName = System.getenv("JOB_NAME");
        String propFile = System.getenv("JOB_PROP_FILE");
        String outFile = System.getenv("JOB_OUTPUT_PROP_FILE");
        try {
            Properties props = new Properties();
            try (InputStream in = new FileInputStream(propFile)) {
                props.load(in);
            }
            String className = props.getProperty("job.class", "").trim();
            if (className.isEmpty()) {
                fail(jobName, "the property 'job.class' is not set", null);
            }
            final String cancelMethod = props.getProperty("method.cancel", "cancel").trim();
            String runMethod = props.getProperty("method.run", "run").trim();
            Runtime.getRuntime().addShutdownHook(new Thread(() -> cancel(jobName, cancelMethod)));

            Class<?> cls;
            try {
                cls = Class.forName(className, true, Thread.currentThread().getContextClassLoader());
            } catch (ClassNotFoundException e) {
                fail(jobName, "class '" + className + "' (job.class) is not on the classpath "
                        + System.getProperty("java.class.path"), null);
                return;
            }
            System.out.println("Running job " + jobName + ": " + className + "." + runMethod + "()");
            Object obj = instantiate(jobName, cls, props);
            jobObject = obj;
            Method run;
            try {
                run = cls.getMethod(runMethod);
            } catch (NoSuchMethodException e) {
                fail(jobName, "class '" + className + "' has no public method " + runMethod
                        + "() (method.run)", null);
                return;
            }
            run.invoke(obj);
            finished = true;
            writeOutputs(jobName, obj, outFile);
        } catch (InvocationTargetException e) {
            finished = true;
            fail(jobName, "the job threw " + e.getCause(), e.getCause());
        } catch (Exception e) {
            finished = true;
            fail(jobName, e.toString(), null);
        }
    }

    private static Object instantiate(String jobName, Class<?> cls, Properties props) throws Exception {
        ClassLoader loader = Thread.currentThread().getContextClassLoader();
        for (String propsClassName : PROPS_CLASSES) {
            Class<?> propsClass;
            try {
                propsClass = Class.forName(propsClassName, true, loader);
            } catch (ClassNotFoundException e) {
                continue;
            }
            Constructor<?> con = constructor(cls, String.class, propsClass);
            if (con != null) {
                Constructor<?> propsCon = constructor(propsClass, propsClass, Properties[].class);
                if (propsCon == null) {
                    continue;
                }
                Object azkabanProps = propsCon.newInstance(null, new Properties[] {props});
                return con.newInstance(jobName, azkabanProps);
            }
        }
        Constructor<?> con = constructor(cls, String.class, Properties.class);
        if (con != null) {
            return con.newInstance(jobName, props);
        }
        con = constructor(cls, String.class, Map.class);
        if (con != null) {
            Map<Object, Object> map = new HashMap<>(props);
            return con.newInstance(jobName, map);
        }
        con = constructor(cls, String.class);
        if (con != null) {
            return con.newInstance(jobName);
        }
        con = constructor(cls);
        if (con != null) {
            return con.newInstance();
        }
        fail(jobName, "class '" + cls.getName() + "' has none of the public constructors (String, Props), "
                + "(String, Properties), (String, Map), (String), ()", null);
        return null;
    }

    private static Constructor<?> constructor(Class<?> cls, Class<?>... args) {
        try {
            return cls.getConstructor(args);
        } catch (NoSuchMethodException e) {
            return null;
        }
    }

    private static void writeOutputs(String jobName, Object obj, String outFile) throws Exception {
        Method getter;
        try {
            getter = obj.getClass().getMethod("getJobGeneratedProperties");
        } catch (NoSuchMethodException e) {
            return;
        }
        Object generated = getter.invoke(obj);
        if (generated == null || outFile == null || outFile.isEmpty()) {
            return;
        }
        Map<String, String> out = new TreeMap<>();
        if (!(generated instanceof Map)) {
            try {
                generated = generated.getClass().getMethod("toProperties").invoke(generated);
            } catch (NoSuchMethodException e) {
                fail(jobName, "getJobGeneratedProperties() returned a " + generated.getClass().getName()
                        + ", not Properties, a Map or an object with toProperties()", null);
            }
        }
        for (Map.Entry<?, ?> e : ((Map<?, ?>) generated).entrySet()) {
            out.put(String.valueOf(e.getKey()), String.valueOf(e.getValue()));
        }
        StringBuilder json = new StringBuilder("{");
        boolean first = true;
        for (Map.Entry<String, String> e : out.entrySet()) {
            if (!first) {
                json.append(", ");
            }
            first = false;
            quote(json, e.getKey());
            json.append(": ");
            quote(json, e.getValue());
        }
        json.append("}\n");
        try (Writer w = new OutputStreamWriter(Files.newOutputStream(Paths.get(outFile)), StandardCharsets.UTF_8)) {
            w.write(json.toString());
        }
    }

    private static void quote(StringBuilder sb, String s) {
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                sb.append('\\').append(c);
            } else if (c < 0x20) {
                sb.append(String.format("\\u%04x", (int) c));
            } else {
                sb.append(c);
            }
        }
        sb.append('"');
    }

    private static void cancel(String jobName, String cancelMethod) {
        Object obj = jobObject;
        if (finished || obj == null) {
            return;
        }
        System.out.println("Job " + jobName + " stopped: calling " + cancelMethod + "()");
        try {
            obj.getClass().getMethod(cancelMethod).invoke(obj);
        } catch (NoSuchMethodException e) {
            System.out.println("Job " + jobName + ": class has no " + cancelMethod + "() (method.cancel)");
        } catch (Exception e) {
            System.out.println("Job " + jobName + ": " + cancelMethod + "() failed: " + e);
        }
    }

    private static void fail(String jobName, String message, Throwable cause) {
        finished = true;
        if (cause != null) {
            cause.printStackTrace(System.out);
        }
        System.out.println("Azkaban java job " + jobName + " failed: " + message);
        System.out.flush();
        Runtime.getRuntime().halt(1);
    }
}
