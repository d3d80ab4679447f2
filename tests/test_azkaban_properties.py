"""Java .properties reader: the syntax of java.util.Properties.load, errors naming source and line."""

from __future__ import annotations

import pytest

from airflow_ml_provider.properties import (
    PropertiesError,
    dump_properties,
    iter_properties,
    load_properties,
    parse_properties,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=1", {"a": "1"}),
        ("a = 1", {"a": "1"}),
        ("a:1", {"a": "1"}),
        ("a : 1", {"a": "1"}),
        ("a 1", {"a": "1"}),
        ("a\t\t1", {"a": "1"}),
        ("   a=1", {"a": "1"}),
        ("a=", {"a": ""}),
        ("a", {"a": ""}),
        ("a:=x", {"a": "=x"}),
        ("a==x", {"a": "=x"}),
        ("a = b = c", {"a": "b = c"}),
        ("a=1   ", {"a": "1   "}),
        ("a\\=b=c", {"a=b": "c"}),
        ("a\\:b:c", {"a:b": "c"}),
        ("a\\ b c", {"a b": "c"}),
        ("\\#notcomment=1", {"#notcomment": "1"}),
        ("a=\\u00e9\\u4E2D", {"a": "\u00e9\u4e2d"}),
        ("a=\\uD83D\\uDE00", {"a": "\U0001f600"}),
        ("a=x\\ty\\nz\\rw\\f", {"a": "x\ty\nz\rw\f"}),
        ("a=\\q\\\\", {"a": "q\\"}),
        ("a=C:\\\\dir", {"a": "C:\\dir"}),
        ("a=1\nb=2\na=3", {"a": "3", "b": "2"}),
    ],
)
def test_single_entries(text, expected):
    assert parse_properties(text) == expected


def test_comments_blank_lines_and_line_endings():
    text = "# c1\n! c2\n   # indented\n\n \t \nk1=v1\r\nk2=v2\rk3=v3\n"
    assert parse_properties(text) == {"k1": "v1", "k2": "v2", "k3": "v3"}


def test_continuation_lines():
    text = "key = first \\\n      second \\\n\tthird\nnext=1\n"
    assert parse_properties(text) == {"key": "first second third", "next": "1"}


def test_continuation_even_backslashes_do_not_continue():
    assert parse_properties("a=x\\\\\nb=y") == {"a": "x\\", "b": "y"}


def test_continuation_line_starting_with_hash_is_not_a_comment():
    assert parse_properties("a=1\\\n  #2\n") == {"a": "1#2"}


def test_comment_line_is_never_continued():
    assert parse_properties("# comment \\\na=1\n") == {"a": "1"}


def test_continued_key():
    assert parse_properties("fo\\\n  o=bar") == {"foo": "bar"}


def test_trailing_backslash_at_end_of_input_is_dropped():
    assert parse_properties("a=1\\") == {"a": "1"}


def test_order_is_preserved_and_duplicate_keeps_first_position():
    d = parse_properties("z=1\na=2\nm=3\nz=4\n")
    assert list(d) == ["z", "a", "m"]
    assert d["z"] == "4"


def test_iter_properties_gives_line_numbers():
    text = "# header\na=1\n\nb=2 \\\n  more\nc=3\n"
    assert list(iter_properties(text)) == [("a", "1", 2), ("b", "2 more", 4), ("c", "3", 6)]


def test_bom_is_ignored():
    assert parse_properties("\ufeffa=1") == {"a": "1"}


@pytest.mark.parametrize("bad", ["a=\\u12G4", "a=\\u12", "a=\\u"])
def test_malformed_unicode_escape_names_source_and_line(bad):
    with pytest.raises(PropertiesError) as err:
        parse_properties(f"# c\nok=1\n{bad}\n", source="proj/x.job")
    assert err.value.source == "proj/x.job"
    assert err.value.line == 3
    assert str(err.value).startswith("proj/x.job:3: malformed \\uXXXX escape")


def test_load_properties_reads_iso_8859_1(tmp_path):
    p = tmp_path / "x.properties"
    p.write_bytes(b"name=caf\xe9\nother=\\u00e9\n")
    assert load_properties(p) == {"name": "café", "other": "é"}


def test_load_properties_missing_file_is_a_properties_error(tmp_path):
    with pytest.raises(PropertiesError, match="cannot read file"):
        load_properties(tmp_path / "nope.properties")


def test_dump_round_trip():
    data = {
        "plain": "v",
        "with space": " leading and trailing ",
        "sep=:#!": "a=b:c",
        "ctl": "\t\n\r\f",
        "uni": "é中\U0001f600",
        "back\\slash": "\\",
        "empty": "",
    }
    text = dump_properties(data)
    text.encode("iso-8859-1")  # dumped text is pure latin-1
    assert parse_properties(text) == data


# ---------------------------------------------------------------------------------------------
# oracle: the real java.util.Properties.load on the same bytes
# ---------------------------------------------------------------------------------------------
JAVA_DUMP = r"""
import java.io.*;
import java.util.*;

public class PropsDump {
    static String hex(String s) {
        StringBuilder b = new StringBuilder("x");
        for (char c : s.toCharArray()) b.append(String.format("%04x", (int) c));
        return b.toString();
    }

    public static void main(String[] args) throws Exception {
        for (String f : args) {
            System.out.println("FILE " + f);
            Properties p = new Properties();
            try (InputStream in = new FileInputStream(f)) {
                p.load(in);
            } catch (IllegalArgumentException e) {
                System.out.println("ERROR");
                continue;
            }
            for (String k : p.stringPropertyNames()) System.out.println(hex(k) + " " + hex(p.getProperty(k)));
        }
    }
}
"""

TRICKY = [
    "a=1\nb = 2\nc:3\nd 4\n  e\t=\t5  \n",
    "key\\ with\\ spaces = v\\=w\\:x\n",
    "multi = one \\\n   two \\\n\tthree\n",
    "even=x\\\\\nnext=y\n",
    "# c \\\nnot=continued\n! bang\n",
    "a:=b\nc==d\ne:f:g\nh = = i\n",
    "u=\\u0041\\u00e9\\uD83D\\uDE00\n",
    "esc=\\t\\n\\r\\f\\q\\\\\n",
    "crlf=1\r\nonlycr=2\rlast=3",
    "trailing=v   \n",
    "dangling=v\\",
    "\\#hash=1\n\\!bang=2\n",
    "  \\ lead=1\n",
    "k\\\n  ey=joined\n",
    "empty\n=novalue\n:alsonone\n",
    "bad=\\u12G4\n",
    "dup=1\ndup=2\n",
]


def _fuzz_cases(n: int = 150) -> list[str]:
    import random

    rng = random.Random(20240611)
    alphabet = [
        "a",
        "b",
        "=",
        ":",
        " ",
        "\t",
        "\\",
        "\\",
        "\n",
        "\r\n",
        "#",
        "!",
        "u",
        "0",
        "4",
        "f",
        "\u00e9",
    ]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def _decode_hex(h: str) -> str:
    units = [int(h[i : i + 4], 16) for i in range(1, len(h), 4)]
    return b"".join(u.to_bytes(2, "big") for u in units).decode("utf-16-be", "surrogatepass")


def test_matches_java_util_properties(tmp_path):
    import shutil
    import subprocess

    from tests.fixtures.services import require_service

    java = shutil.which("java")
    require_service(
        bool(java and shutil.which("javac")), "a JDK (java + javac) to run java.util.Properties as the oracle"
    )
    src = tmp_path / "PropsDump.java"
    src.write_text(JAVA_DUMP)
    subprocess.run(["javac", "-d", str(tmp_path), str(src)], check=True, capture_output=True, timeout=120)
    cases = TRICKY + _fuzz_cases()
    paths = []
    for i, text in enumerate(cases):
        p = tmp_path / f"case{i}.properties"
        p.write_bytes(text.encode("iso-8859-1"))
        paths.append(str(p))
    out = subprocess.run(
        ["java", "-cp", str(tmp_path), "PropsDump", *paths],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    java_results: dict[str, dict[str, str] | None] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("FILE "):
            current = line[5:]
            java_results[current] = {}
        elif line == "ERROR":
            java_results[current] = None
        else:
            k, v = line.split(" ")
            java_results[current][_decode_hex(k)] = _decode_hex(v)
    assert len(java_results) == len(cases)
    assert java_results[paths[TRICKY.index("bad=\\u12G4\n")]] is None  # Java rejects it too
    assert java_results[paths[0]] == {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5  "}
    mismatches = []
    for path, text in zip(paths, cases):
        expected = java_results[path]
        try:
            ours = load_properties(path)
        except PropertiesError:
            ours = None
        if ours != expected:
            mismatches.append((text, expected, ours))
    assert not mismatches, mismatches[:3]
