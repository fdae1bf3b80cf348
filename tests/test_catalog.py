"""The engine catalog's knobs from a command line (`workbench serve --engine-arg NAME=VALUE`)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.engines.catalog import check_knobs, engine_kinds, engine_knobs, parse_knob


def test_values_are_read_by_the_type_of_the_knobs_default():
    assert parse_knob("esurge", "scheduling_policy=priority") == ("scheduling_policy", "priority")
    assert parse_knob("esurge", "max-num-seqs=16") == ("max_num_seqs", 16)  # dashes read as _
    assert parse_knob("esurge", "enable_prefix_caching=false") == ("enable_prefix_caching", False)
    assert parse_knob("esurge", "enable_prefix_caching=Yes") == ("enable_prefix_caching", True)
    assert parse_knob("esurge", "kv_cache_memory=512MiB") == ("kv_cache_memory", "512MiB")
    assert parse_knob("esurge", "kv_cache_fraction=0.5") == ("kv_cache_fraction", 0.5)
    assert parse_knob("esurge", "num_pages=none") == ("num_pages", None)
    assert parse_knob("esurge", "compilation_cache=false") == ("compilation_cache", False)
    assert parse_knob("vinference", "prefill_buckets=32,64,128") == ("prefill_buckets",
                                                                      (32, 64, 128))
    assert parse_knob("vsurge", "interleaved_mode=true") == ("interleaved_mode", True)


@pytest.mark.parametrize("text, match", [
    ("max_num_seqs", "looks like name=value, got 'max_num_seqs'"),
    ("=3", "looks like name=value"),
    ("max_batch=4", "esurge has no knob 'max_batch'; its knobs are .*max_num_seqs"),
    ("max_num_seqs=lots", "esurge knob 'max_num_seqs' must be an integer, got 'lots'"),
    ("enable_prefix_caching=maybe", "must be true or false, got 'maybe'"),
    ("kv_cache_fraction=half", "must be a number, got 'half'"),
])
def test_bad_engine_arguments_name_the_problem(text, match):
    with pytest.raises(ValueError, match=match):
        parse_knob("esurge", text)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(engine_kinds()), text=st.text(max_size=40))
def test_any_text_parses_or_is_a_value_error_and_parsed_knobs_pass_the_type_check(kind, text):
    names = sorted(engine_knobs(kind))
    for candidate in (text, f"{names[len(text) % len(names)]}={text}"):
        try:
            name, value = parse_knob(kind, candidate)
        except ValueError:
            continue
        check_knobs(kind, {name: value})  # what parses has the default's type


@pytest.mark.parametrize("kind", engine_kinds())
def test_every_default_has_a_declared_type(kind):
    check_knobs(kind, engine_knobs(kind))  # annotations and defaults agree


@pytest.mark.parametrize("kind, knobs, match", [
    ("esurge", {"num_pages": "many"}, "esurge knob 'num_pages' must be an integer or None, got 'many'"),
    ("esurge", {"max_num_seqs": True}, "knob 'max_num_seqs' must be an integer or None, got True"),
    ("esurge", {"kv_cache_fraction": "half"}, "must be a number or None"),
    ("esurge", {"compilation_cache": 3}, "must be a string or a bool or None, got 3"),
    ("vinference", {"prefill_buckets": "32,64"}, "must be a tuple or list of integers or None, got '32,64'"),
    ("vsurge", {"interleaved_mode": 1}, "must be a bool, got 1"),
])
def test_check_knobs_reads_the_declared_types_including_none_defaults(kind, knobs, match):
    with pytest.raises(ValueError, match=match):
        check_knobs(kind, knobs)


def test_check_knobs_accepts_what_the_declared_types_allow():
    check_knobs("esurge", {"num_pages": None, "max_num_seqs": np.int64(8),
                           "kv_cache_fraction": 1, "kv_cache_memory": "1GiB",
                           "compilation_cache": False})
    check_knobs("vinference", {"prefill_buckets": [32, 64], "batch_buckets": (1, 8)})


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=8), st.lists(st.integers(), max_size=3),
                    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(engine_kinds()), data=st.data())
def test_any_value_passes_or_is_a_value_error_naming_the_knob(kind, data):
    name = data.draw(st.sampled_from(sorted(engine_knobs(kind))))
    value = data.draw(_VALUES)
    try:
        check_knobs(kind, {name: value})
    except ValueError as e:
        assert f"knob {name!r} must be" in str(e)
