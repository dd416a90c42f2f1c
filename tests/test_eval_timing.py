"""The timing harness: interleaved rounds (speedups as medians of per-round ratios: its doctest)."""

import time

import pytest

from ee_diffusion.eval.timing import interleaved_timings


def test_methods_are_interleaved_after_the_warmup():
    calls = []
    times = interleaved_timings({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1)
    assert len(calls) == 6 and all(sorted(calls[i:i + 2]) == ["a", "b"] for i in (0, 2, 4))  # each round: both once
    assert {name: len(values) for name, values in times.items()} == {"a": 2, "b": 2}
    assert all(v >= 0 for values in times.values() for v in values)


@pytest.mark.parametrize("kwargs, message", [
    ({"repeats": 0}, r"repeats must be an integer >= 1 \(timed rounds\), got 0"),
    ({"repeats": 2.0}, r"repeats must be an integer >= 1 \(timed rounds\), got 2.0"),
    ({"warmup": -1}, r"warmup must be an integer >= 0 \(untimed rounds\), got -1"),
    ({"warmup": True}, r"warmup must be an integer >= 0 \(untimed rounds\), got True"),
])
def test_bad_counts_raise_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        interleaved_timings({"a": lambda: None}, **kwargs)


def test_no_methods_raises():
    with pytest.raises(ValueError, match="methods must not be empty"):
        interleaved_timings({})


def test_setup_steps_run_before_every_call_and_are_not_timed():
    calls = []
    methods = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    setup = {"a": lambda: (calls.append("setup a"), time.sleep(0.02))}
    times = interleaved_timings(methods, repeats=2, warmup=1, setup=setup)
    assert calls.count("setup a") == 3 and all(calls[i + 1] == "a" for i, c in enumerate(calls) if c == "setup a")
    assert calls.count("a") == calls.count("b") == 3
    assert max(times["a"]) < 0.01  # the 20 ms setup is outside the timed region
    with pytest.raises(ValueError, match=r"setup names methods that are not timed: \['c'\]"):
        interleaved_timings(methods, repeats=1, setup={"c": lambda: None})


def test_exit_config_switch_leaves_the_model_unhooked_and_times_hooked_methods_hooked():
    import torch

    from ee_diffusion import EarlyExitConfig, get_exit_stats, is_early_exit_applied
    from ee_diffusion.eval.timing import ExitConfigSwitch
    from ee_diffusion.schedules import StaticDepth
    from ee_diffusion.testing import tiny_dit

    model = tiny_dit(num_layers=3)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 900]), torch.tensor([1, 2])
    seen = []

    def call():
        model(x, t, y)
        seen.append(get_exit_stats(model).blocks_run[0].tolist() if is_early_exit_applied(model) else "stock")

    switch = ExitConfigSwitch(model)
    interleaved_timings({"full": call, "static_1": call}, repeats=1, warmup=0,
                        setup={"full": switch.stock, "static_1": switch.use(EarlyExitConfig(policy=StaticDepth(1)))})
    switch.close()
    assert sorted(map(str, seen)) == ["[1, 1]", "stock"] and not is_early_exit_applied(model)


def test_rounds_shuffle_the_order_repeatably_and_setup_and_teardown_stay_outside_the_timed_region():
    order, events = [], []
    methods = {name: (lambda name=name: order.append(name)) for name in "abcdefgh"}
    setup = {"b": lambda: (events.append("setup"), time.sleep(0.05))}
    teardown = {"b": lambda: (events.append("teardown"), time.sleep(0.05))}
    times = interleaved_timings(methods, repeats=3, warmup=1, setup=setup, teardown=teardown)
    rounds = [order[i:i + 8] for i in range(0, 32, 8)]
    assert all(sorted(r) == list("abcdefgh") for r in rounds)
    # A method's place changes between rounds (no method is always early or late), the same way in every run.
    assert len({tuple(r) for r in rounds}) == 4 and len({r.index("a") for r in rounds}) > 1
    again = []
    interleaved_timings({name: (lambda name=name: again.append(name)) for name in "abcdefgh"}, repeats=3, warmup=1)
    assert again == order
    assert events == ["setup", "teardown"] * 4
    assert max(times["b"]) < 0.04  # the sleeps in setup and teardown are not timed
    with pytest.raises(ValueError, match=r"teardown names methods that are not timed: \['z'\]"):
        interleaved_timings(methods, repeats=1, warmup=0, teardown={"z": lambda: None})
