#!/usr/bin/env python3
"""A real, single-node HDFS (NameNode + DataNode + WebHDFS) from Hadoop 2.7.3 jars.

Debian ships no Hadoop, but PyPI's ``pyspark==2.4.8`` source archive carries the Hadoop 2.7.3 jars,
and ``hadoop-hdfs-2.7.3.jar`` holds a real NameNode, DataNode and WebHDFS. Java 17 runs them.

Commands::

    python scripts/hdfs.py fetch-jars          # download pyspark 2.4.8 once, keep only its jars (cached)
    python scripts/hdfs.py start [--dir DIR]   # format + start NameNode and DataNode; prints the state file
    python scripts/hdfs.py status [--dir DIR]
    python scripts/hdfs.py stop [--dir DIR]    # stop both processes by PID

The jars are cached in ``$AIRFLOW_ML_HADOOP_JARS`` (default ``~/.cache/airflow-ml-provider/hadoop-2.7.3``),
so a fresh clone on the same machine does not download them again. The test harness
(``tests/fixtures/hdfs.py``) uses :func:`start` and :func:`stop` from this module.

Ports (loopback only): RPC ``fs.defaultFS=hdfs://127.0.0.1:9000``, NameNode HTTP/WebHDFS 127.0.0.1:9870,
DataNode 127.0.0.1:9866 (data), 9864 (HTTP), 9867 (IPC). Override the base ports with
``AIRFLOW_ML_HDFS_RPC_PORT`` and ``AIRFLOW_ML_HDFS_HTTP_PORT``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

HADOOP_VERSION = "2.7.3"
PYSPARK_VERSION = "2.4.8"
DEBIAN_JARS = (
    "/usr/share/java/jersey1-core.jar",
    "/usr/share/java/jersey1-server.jar",
    "/usr/share/java/jersey1-servlet.jar",
    "/usr/share/java/jsr311-api.jar",
)
DEBIAN_PACKAGES = "libjersey1-core-java libjersey1-server-java libjersey1-servlet-java libjsr311-api-java"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO / ".hdfs"


class HdfsError(RuntimeError):
    """The HDFS could not be fetched or started; the message says why."""


def jars_dir() -> Path:
    default = Path.home() / ".cache" / "airflow-ml-provider" / f"hadoop-{HADOOP_VERSION}"
    return Path(os.environ.get("AIRFLOW_ML_HADOOP_JARS", default))


def have_jars() -> bool:
    d = jars_dir()
    return (d / f"hadoop-hdfs-{HADOOP_VERSION}.jar").exists() and (d / ".complete").exists()


def fetch_jars(python: str = sys.executable) -> Path:
    """Download the pyspark sdist from PyPI once and keep its ``jars/`` folder."""
    target = jars_dir()
    if have_jars():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyspark-dl-") as tmp:
        cmd = [python, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "-q",
               f"pyspark=={PYSPARK_VERSION}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("pyspark-*.tar.gz"))
        if not archives:
            raise HdfsError(f"could not download pyspark=={PYSPARK_VERSION}: {proc.stderr.strip()[-2000:]}")
        staging = Path(tempfile.mkdtemp(prefix="hadoop-jars-", dir=target.parent))
        with tarfile.open(archives[0]) as tar:
            for member in tar:
                parts = Path(member.name).parts
                # pyspark-2.4.8/deps/jars/*.jar (the sdist's pyspark/jars is a link to deps/jars)
                if member.isfile() and member.name.endswith(".jar") and "jars" in parts:
                    member.name = Path(member.name).name
                    tar.extract(member, staging, filter="data")
        if not (staging / f"hadoop-hdfs-{HADOOP_VERSION}.jar").exists():
            shutil.rmtree(staging, ignore_errors=True)
            raise HdfsError(f"pyspark {PYSPARK_VERSION} sdist holds no hadoop-hdfs-{HADOOP_VERSION}.jar")
        (staging / ".complete").write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target


@dataclass
class HdfsState:
    """What a running HDFS looks like to its users."""

    dir: str
    rpc_port: int
    http_port: int
    namenode_pid: int
    datanode_pid: int

    @property
    def webhdfs_host(self) -> str:
        return "127.0.0.1"

    @property
    def webhdfs_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/webhdfs/v1"


def _site_xml(props: dict[str, str]) -> str:
    body = "".join(f"  <property><name>{k}</name><value>{v}</value></property>\n" for k, v in props.items())
    return f'<?xml version="1.0"?>\n<configuration>\n{body}</configuration>\n'


def _ports() -> tuple[int, int]:
    return int(os.environ.get("AIRFLOW_ML_HDFS_RPC_PORT", "9000")), int(
        os.environ.get("AIRFLOW_ML_HDFS_HTTP_PORT", "9870")
    )


def webhdfs_ready(http_port: int, timeout: float = 2.0) -> bool:
    """True when WebHDFS answers and a DataNode is live (so writes work)."""
    url = f"http://127.0.0.1:{http_port}/jmx?qry=Hadoop:service=NameNode,name=FSNamesystemState"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            beans = json.load(resp).get("beans", [])
        live = beans[0].get("NumLiveDataNodes", 0) if beans else 0
        with urllib.request.urlopen(
            f"http://127.0.0.1:{http_port}/webhdfs/v1/?op=GETFILESTATUS", timeout=timeout
        ) as resp:
            resp.read()
        return live >= 1
    except (OSError, urllib.error.URLError, ValueError, IndexError):
        return False


def _check_prereqs() -> None:
    if shutil.which("java") is None:
        raise HdfsError("java not found (install default-jre-headless)")
    missing = [j for j in DEBIAN_JARS if not Path(j).exists()]
    if missing:
        raise HdfsError(f"missing {', '.join(missing)}: apt-get install -y {DEBIAN_PACKAGES}")
    if not have_jars():
        raise HdfsError(f"Hadoop jars not found in {jars_dir()}: run `python scripts/hdfs.py fetch-jars`")


def start(base: Path = DEFAULT_DIR, *, timeout: float = 90.0) -> HdfsState:
    """Format a fresh NameNode in ``base`` and start NameNode + DataNode; wait until writes work."""
    _check_prereqs()
    rpc_port, http_port = _ports()
    base = Path(base).resolve()
    if base.exists():
        stop(base)
        shutil.rmtree(base)
    conf = base / "conf"
    for sub in ("conf", "name", "data", "logs"):
        (base / sub).mkdir(parents=True)
    # Hadoop's HTTP servers look up webapps/<name> on the classpath.
    for app in ("hdfs", "datanode", "secondary", "journal"):
        (base / "cp" / "webapps" / app).mkdir(parents=True)
    (conf / "core-site.xml").write_text(
        _site_xml({"fs.defaultFS": f"hdfs://127.0.0.1:{rpc_port}", "hadoop.tmp.dir": str(base / "tmp")})
    )
    (conf / "hdfs-site.xml").write_text(
        _site_xml(
            {
                "dfs.replication": "1",
                "dfs.webhdfs.enabled": "true",
                "dfs.permissions.enabled": "false",
                "dfs.namenode.name.dir": f"file://{base / 'name'}",
                "dfs.datanode.data.dir": f"file://{base / 'data'}",
                "dfs.namenode.rpc-address": f"127.0.0.1:{rpc_port}",
                "dfs.namenode.http-address": f"127.0.0.1:{http_port}",
                "dfs.datanode.address": "127.0.0.1:9866",
                "dfs.datanode.http.address": "127.0.0.1:9864",
                "dfs.datanode.ipc.address": "127.0.0.1:9867",
                "dfs.namenode.secondary.http-address": "127.0.0.1:9868",
                "dfs.datanode.hostname": "127.0.0.1",
                "dfs.namenode.datanode.registration.ip-hostname-check": "false",
                "dfs.namenode.safemode.extension": "0",
                "dfs.heartbeat.interval": "1",
            }
        )
    )
    (conf / "log4j.properties").write_text(
        "log4j.rootLogger=WARN, console\n"
        "log4j.appender.console=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.console.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.console.layout.ConversionPattern=%d %p %c: %m%n\n"
    )
    classpath = os.pathsep.join([str(conf), str(base / "cp"), f"{jars_dir()}/*", *DEBIAN_JARS])
    java = ["java", "-Xmx512m", "-Djava.net.preferIPv4Stack=true", "-cp", classpath]
    fmt = subprocess.run(
        [*java, "org.apache.hadoop.hdfs.server.namenode.NameNode", "-format", "-force", "-nonInteractive"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if fmt.returncode != 0:
        raise HdfsError(f"NameNode format failed: {fmt.stderr[-2000:]}")

    def launch(cls: str, name: str) -> int:
        log = open(base / "logs" / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [*java, cls], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=base
        )
        return proc.pid

    nn = launch("org.apache.hadoop.hdfs.server.namenode.NameNode", "namenode")
    dn = launch("org.apache.hadoop.hdfs.server.datanode.DataNode", "datanode")
    state = HdfsState(str(base), rpc_port, http_port, nn, dn)
    (base / "state.json").write_text(json.dumps(asdict(state)))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if webhdfs_ready(http_port):
            return state
        for pid, name in ((nn, "namenode"), (dn, "datanode")):
            if not _alive(pid):
                tail = (base / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
                stop(base)
                raise HdfsError(f"HDFS {name} exited during start-up:\n{tail}")
        time.sleep(0.5)
    stop(base)
    raise HdfsError(f"HDFS not ready after {timeout:.0f} s (see {base / 'logs'})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child still answers kill(0): look at /proc
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def read_state(base: Path = DEFAULT_DIR) -> HdfsState | None:
    path = Path(base) / "state.json"
    if not path.exists():
        return None
    return HdfsState(**json.loads(path.read_text()))


def stop(base: Path = DEFAULT_DIR) -> None:
    """Stop the NameNode and DataNode started in ``base`` (by PID)."""
    state = read_state(base)
    if state is None:
        return
    for pid in (state.datanode_pid, state.namenode_pid):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 15
    for pid in (state.datanode_pid, state.namenode_pid):
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (Path(base) / "state.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["fetch-jars", "start", "stop", "status"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch-jars":
            print(f"Hadoop jars in {fetch_jars()}")
        elif args.command == "start":
            state = start(args.dir)
            print(json.dumps(asdict(state)))
        elif args.command == "stop":
            stop(args.dir)
        else:
            state = read_state(args.dir)
            up = state is not None and webhdfs_ready(state.http_port)
            print("running" if up else "stopped")
            return 0 if up else 3
    except HdfsError as exc:
        print(f"hdfs: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
