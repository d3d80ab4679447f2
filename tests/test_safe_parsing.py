"""The project's bounded YAML loader (ml/safeyaml.py) and strict JSON reader (ml/safejson.py)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import yaml

from airflow_ml_provider.ml import safejson, safeyaml

REPO = Path(__file__).resolve().parent.parent


class SmallLimit(safeyaml.SafeYamlLoader):
    max_alias_values = 50


def load_small(text: str):
    return safeyaml.safe_load(text, loader=SmallLimit)


def test_aliases_are_counted_exactly_against_the_bound():
    # &a has 1 + 4 = 5 values; ten aliases add 50: exactly the bound, accepted
    ten = "a: &a [1, 2, 3, 4]\nb: [" + ", ".join(["*a"] * 10) + "]\n"
    data = load_small(ten)
    assert data["b"] == [[1, 2, 3, 4]] * 10
    eleven = "a: &a [1, 2, 3, 4]\nb: [" + ", ".join(["*a"] * 11) + "]\n"
    with pytest.raises(safeyaml.YamlLimitError) as info:
        load_small(eleven)
    assert info.value.problem_mark.line == 1  # 0-based: the second line
    assert "aliases expand past 50 values" in info.value.problem and "*a" in info.value.problem


def test_nested_aliases_count_their_full_expansion():
    # b expands to 1 + 3 * 3 = 10 values; three *b add 30, the three *a inside b added 9: 39 <= 50
    text = "a: &a [x, y]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n"
    assert load_small(text)["c"][2][1] == ["x", "y"]
    with pytest.raises(safeyaml.YamlLimitError, match="past 50"):
        load_small(text + "d: [*b, *b]\n")  # 39 + 20 > 50


def test_recursive_alias_is_refused_with_its_line():
    with pytest.raises(safeyaml.YamlLimitError) as info:
        safeyaml.safe_load("top:\n  list: &n\n    - x\n    - *n\n")
    assert "recursive alias *n" in info.value.problem
    assert info.value.problem_mark.line + 1 == 4


def test_merge_keys_and_ordinary_anchors_work():
    text = "base: &base {a: 1, b: 2}\nchild:\n  <<: *base\n  b: 3\n"
    assert safeyaml.safe_load(text) == {"base": {"a": 1, "b": 2}, "child": {"a": 1, "b": 3}}


def test_nesting_depth_is_bounded_for_block_and_flow_styles():
    ok = "x:\n" + "".join(" " * i + "- \n" for i in range(1, 99))
    assert safeyaml.safe_load(ok) is not None
    deep_block = "x:\n" + "".join(" " * i + "- \n" for i in range(1, 120))
    with pytest.raises(safeyaml.YamlLimitError, match="nesting deeper than 100 levels"):
        safeyaml.safe_load(deep_block)
    with pytest.raises(yaml.YAMLError):  # libyaml's own bound, or ours: never a crash
        safeyaml.safe_load("[" * 100_000 + "]" * 100_000)
    with pytest.raises(safeyaml.YamlLimitError, match="nesting deeper than 100 levels"):
        safeyaml.safe_load("[" * 150 + "]" * 150)


def test_integer_digits_are_bounded_with_the_line():
    assert safeyaml.safe_load("n: " + "9" * 4300) == {"n": int("9" * 4300)}
    assert safeyaml.safe_load("n: 1_000") == {"n": 1000}
    with pytest.raises(yaml.constructor.ConstructorError) as info:
        safeyaml.safe_load("a: 1\nn: " + "9" * 4301)
    assert "4301 digits" in info.value.problem and info.value.problem_mark.line == 1


def test_same_data_as_pyyaml_on_real_files():
    """The repository's YAML files and the Azkaban corpus read the same as with yaml.safe_load."""
    files = [p for p in REPO.glob("dags/**/*.y*ml")] + [REPO / "docker-compose.yaml"]
    corpus = Path(os.environ.get("AZKABAN_CORPUS", REPO.parent / "shared" / "azkaban-corpus"))
    if corpus.is_dir():
        files += sorted(corpus.rglob("*.flow")) + sorted(corpus.rglob("*.project"))
    files = [f for f in files if f.is_file()]
    assert files
    compared = 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            expected = yaml.safe_load(text)
        except yaml.YAMLError:
            with pytest.raises(yaml.YAMLError):
                safeyaml.safe_load(text)
            continue
        assert safeyaml.safe_load(text) == expected, path
        compared += 1
    assert compared >= 2


def test_compose_gives_nodes_and_a_constructor():
    node, loader = safeyaml.compose("a: &x [1, 2]\nb: *x\n")
    assert isinstance(node, yaml.MappingNode)
    assert node.value[0][1] is node.value[1][1]  # an alias is the same node, not a copy
    assert loader.construct_object(node.value[1][1], deep=True) == [1, 2]


# ---------------------------------------------------------------------------------------------
# safejson


def test_json_defaults_match_json_loads_except_duplicates():
    assert safejson.loads('{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    assert math.isnan(safejson.loads('{"a": NaN}')["a"])
    assert safejson.loads(b'{"a": "\xc3\xa9"}') == {"a": "\u00e9"}
    assert safejson.loads('{"a": 1, "a": 2}', allow_duplicate_keys=True) == {"a": 2}


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ('{"a": 1,\n  "a": 2}', {}, "f.json: line 2, column 3: duplicate key 'a': a key may appear once in an object (at $.a)"),
        ('{"x": {"y z": [0, NaN]}}', {"allow_nan": False}, 'line 1, column 19: NaN is not a number JSON allows (at $.x["y z"][1])'),
        ('[1, -Infinity]', {"allow_nan": False}, "line 1, column 5: -Infinity is not a number JSON allows (at $[1])"),
        ('{"e": [{"v": 2e400}]}', {"allow_nan": False}, "the number 2e400 is out of range (at $.e[0].v)"),
        ('{"n": -%s}' % ("1" * 4301), {}, "line 1, column 7: a number with 4301 digits (the limit is 4300) (at $.n)"),
        ('{"a": ', {}, "f.json: invalid JSON at line 1, column 7: Expecting value"),
        ('{"d": ' + "[" * 50_000 + "]" * 50_000 + "}", {}, "nested deeper than"),
        (b"\xff", {}, "f.json: not UTF-8 text (byte 0)"),
    ],
)
def test_json_errors_name_line_column_and_key(text, kwargs, message):
    with pytest.raises(safejson.JSONInputError) as info:
        safejson.loads(text, source="f.json", **kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_json_duplicate_keys_in_different_objects_are_fine():
    doc = '{"entries": [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]}'
    assert len(safejson.loads(doc)["entries"]) == 2
