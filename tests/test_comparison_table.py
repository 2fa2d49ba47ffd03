"""The comparison table's verdict lines: who won each criterion, from the rows alone."""

from hf_llpf.comparison_table import markdown_table, verdict_lines


def _row(method, max_loss, iters, seconds, certified):
    return {"method": method, "status": "ok", "max_train_loss": max_loss, "sgd_iters": iters, "seconds": seconds,
            "certified": certified, "barrier": 0.0, "min_train_acc": 1.0, "test_loss_range": [0.1, 0.2],
            "test_acc_range": [0.9, 1.0]}  # fmt: skip


def test_each_criterion_names_its_winner_even_when_it_is_not_llpf():
    rows = [
        _row("llpf", 0.0717, 521, 30.0, True),
        _row("linear", 0.1932, 0, 1.0, None),
        _row("bezier", 0.0105, 521, 20.0, True),
        _row("slerp", 0.0250, 0, 1.0, None),
        {"method": "weight-matching", "status": "not applicable: attention"},
    ]
    assert verdict_lines(rows) == [
        "lowest maximum train loss: bezier (0.0105; next slerp 0.0250)",
        "lowest cost to certify: bezier (521 SGD iterations, 20.0 s); also certified: llpf",
    ]


def test_an_uncertified_path_never_wins_the_cost_to_certify():
    rows = [_row("llpf", 0.05, 600, 9.0, True), _row("bezier", 0.04, 100, 2.0, False)]
    assert verdict_lines(rows)[1] == (
        "lowest cost to certify: llpf (600 SGD iterations, 9.0 s); no other method was certified"
    )
    assert verdict_lines([_row("linear", 2.4, 0, 1.0, None)]) == [
        "lowest maximum train loss: linear (2.4000)",
        "lowest cost to certify: none — no path in this comparison was certified under a ceiling",
    ]


def test_the_markdown_table_ends_with_the_verdicts_and_shows_certification():
    table = {
        "settings": {},
        "rows": [_row("llpf", 0.05, 600, 9.0, True), _row("linear", 2.4, 0, 1.0, None)],
        "probe": {"train_examples": 10, "train": "a" * 64, "test_examples": 5, "test": "b" * 64},
    }
    lines = markdown_table(table).splitlines()
    assert lines[0].endswith("| wall s | certified | SGD iters to certify | s to certify | full-set max |")
    assert lines[2] == (
        "| llpf | 0.0500 | 0.0000 | 100.00% | 0.100–0.200 | 90.00%–100.00% | 600 | 9.0 | yes | — | — | — |"
    )
    assert lines[3].endswith("| 0 | 1.0 | — | — | — | — |")  # accuracy in percent, as evaluate and the card print it
    assert lines[-2:] == [
        "verdict: lowest maximum train loss: llpf (0.0500; next linear 2.4000)",
        "verdict: lowest cost to certify: llpf (600 SGD iterations, 9.0 s); no other method was certified",
    ]


def test_the_cost_to_certify_is_what_each_certified_path_spent_until_it_was_certified():
    from hf_llpf.comparison_table import certify_cost

    llpf_run = {"sgd_iters": 645, "certification": {"ceiling": 0.06, "certified": True, "final_check": {"max": 0.05}}}
    assert certify_cost(llpf_run, 30.04) == {
        "certified": True, "ceiling": 0.06, "iters_to_certify": 645, "seconds_to_certify": 30.04,
        "full_set_max": 0.05,
    }  # fmt: skip
    above = [{"what": "segment", "tick": 15, "t": 0.483, "loss": 0.0712}]
    cert = {"ceiling": 0.06, "certified": False, "cap": 3000, "cap_hit": True, "stopped": "cap",
            "iters_to_certify": None, "uncertified": above, "final_check": {"max": 0.0712}}  # fmt: skip
    capped = {"sgd_iters": 3000, "certification": cert}
    assert certify_cost(capped, 200.0) == {
        "certified": False, "ceiling": 0.06, "iters_to_certify": None, "seconds_to_certify": None,
        "full_set_max": 0.0712, "cap": 3000, "cap_hit": True, "stopped": "cap", "uncertified": above,
    }  # fmt: skip
    rows = [
        {**_row("llpf", 0.0575, 645, 30.0, True), **certify_cost(llpf_run, 30.0)},
        {**_row("bezier", 0.0560, 950, 111.8, True), "iters_to_certify": 950, "seconds_to_certify": 111.8},
        {**_row("autoneb", 0.0712, 3000, 200.0, False), **certify_cost(capped, 200.0)},
    ]
    assert (
        verdict_lines(rows)[1] == "lowest cost to certify: llpf (645 SGD iterations, 30.0 s); also certified: bezier"
    )
    table = {"settings": {}, "rows": rows, "probe": {"train_examples": 10, "train": "a" * 64, "test_examples": 5,
                                                      "test": "b" * 64}}  # fmt: skip
    lines = markdown_table(table).splitlines()
    assert lines[2].endswith("| yes | 645 | 30.0 | 0.0500 |") and lines[4].endswith("| NO | — | — | 0.0712 |")
    assert (
        "- autoneb: NOT certified: the cap of 3000 SGD iterations was reached; 1 above the ceiling 0.0600: "
        "segment at t=0.483 0.0712" in lines
    )
