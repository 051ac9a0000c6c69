from potstill.data.demo import parse_polarity, split_gold

CSV = '\ufeff"1","a gorgeous , witty \nfilm . \n"\n"-1","a dull mess"\n"0","neutral?"\n"1",""\n"-1","x","y"\n'


def test_parse_keeps_quoted_newlines_and_sets_bad_rows_aside_by_row_and_field():
    rows, rejected = parse_polarity(CSV.removeprefix("\ufeff"))
    assert rows == [
        {"id": "pl-00001", "text": "a gorgeous , witty film .", "label": "positive"},
        {"id": "pl-00002", "text": "a dull mess", "label": "negative"},
    ]
    assert [(r.row, r.field) for r in rejected] == [(3, "label"), (4, "text"), (5, "<row>")]
    assert "'0' is not one of" in rejected[0].reason


def test_split_is_stratified_disjoint_and_unlabeled():
    rows = [
        {"id": f"r{i}", "text": f"t{i}", "label": "positive" if i % 4 else "negative"} for i in range(400)
    ]
    prompts, gold = split_gold(rows, 100, seed=1)
    assert len(gold) == 100 and len(prompts) == 300
    assert not {r["id"] for r in gold} & {r["id"] for r in prompts}
    assert all("label" not in r for r in prompts)
    assert sum(r["label"] == "negative" for r in gold) == 25
    assert split_gold(rows, 100, seed=1) == (prompts, gold)
