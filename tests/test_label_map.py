import pandas as pd, pytest
from pipeline.adapters import manifest
from pipeline.errors import UserError

def _csv(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("dialogue_id,utterance_id,speaker,text,label,split\n"
                 "d,0,A,a,neutral,train\nd,1,B,b,frustrated,train\nd,2,A,c,excited,train\nd,3,B,d,happy,train\n"
                 "e,0,A,x,sad,test\n")
    return p

def test_label_map_merges_drops_and_renumbers(tmp_path):
    res = manifest.load(_csv(tmp_path), {"probe_media": False, "label_map": {"excited": "happy", "frustrated": None}})
    d = res.rows[res.rows.dialogue_id == "d"].sort_values("utterance_id")
    assert d.text.tolist() == ["a", "c", "d"] and d.utterance_id.tolist() == [0, 1, 2]
    assert d.label.tolist() == ["neutral", "happy", "happy"]
    assert res.labels == ["happy", "neutral", "sad"] and res.counts["dropped_frustrated"] == 1

def test_label_map_refuses_unknown_label(tmp_path):
    with pytest.raises(UserError, match="does not have"):
        manifest.load(_csv(tmp_path), {"probe_media": False, "label_map": {"joy": "happy"}})
