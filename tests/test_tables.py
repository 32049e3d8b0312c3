"""The one text-table printer (`keras_cnn.utils.tables.format_table`) and the one JSON cleaner (`keras_cnn.utils.io.jsonable`)."""
import numpy as np
import pytest

from keras_cnn.utils import io
from keras_cnn.utils.tables import RED, RESET, format_table


def test_columns_align_to_their_widest_cell():
    text = format_table(("name", "params", "note"), [("small", "1,234", ""), ("deeper", "12", "wide")], right={1})
    assert text.splitlines() == ["name    params  note",
                                 "small    1,234",
                                 "deeper      12  wide"]


def test_a_rule_under_the_header_and_red_rows():
    lines = format_table(("a", "b"), [(1, None), (22, 3)], rule=True, red_rows={1}).splitlines()
    assert lines[:3] == ["a   b", "-----", "1   None"]
    assert lines[3] == f"{RED}22  3{RESET}"


def test_jsonable_gives_plain_json_types():
    value = {"shape": (8, 8, 1), "n": np.int64(3), "x": np.arange(2), "set": {1}}
    assert io.jsonable(value) == {"shape": [8, 8, 1], "n": 3, "x": [0, 1], "set": [1]}
    assert io.jsonable({"f": len}, other=repr) == {"f": "<built-in function len>"}
    with pytest.raises(TypeError, match="not JSON serializable: builtin_function_or_method"):
        io.jsonable({"f": len})
