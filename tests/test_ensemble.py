import json

import numpy as np
import pandas as pd
import pytest

from digitjax.ensemble import average as ensemble
from digitjax.errors import UserError


def member(folder, test_probs, val_probs, val_labels):
    folder.mkdir()
    np.save(folder / "test_probs.npy", np.asarray(test_probs, np.float32))
    np.save(folder / "val_probs.npy", np.asarray(val_probs, np.float32))
    np.save(folder / "val_labels.npy", np.asarray(val_labels))
    pd.DataFrame({"id": [1, 2], "label": ["0", "0"]}).to_csv(folder / "predictions.csv",
                                                             index=False)
    (folder / "submission.csv").write_text("ImageId,Label\n1,0\n2,0\n")
    (folder / "classes.json").write_text(json.dumps(["0", "1"]))
    return folder


def test_ensemble_averages_probabilities(tmp_path):
    # each member is right once, confidently; the average is right twice
    a = member(tmp_path / "a", [[0.9, 0.1], [0.4, 0.6]], [[0.9, 0.1], [0.55, 0.45]], [0, 1])
    b = member(tmp_path / "b", [[0.2, 0.8], [0.3, 0.7]], [[0.4, 0.6], [0.1, 0.9]], [0, 1])
    report = ensemble([a, b], tmp_path / "out")
    probs = np.load(tmp_path / "out" / "test_probs.npy")
    np.testing.assert_allclose(probs, [[0.55, 0.45], [0.35, 0.65]], rtol=1e-6)
    sub = pd.read_csv(tmp_path / "out" / "submission.csv")
    assert sub.to_dict("list") == {"ImageId": [1, 2], "Label": [0, 1]}
    assert report["member_val_accuracy"] == [0.5, 0.5] and report["val_accuracy"] == 1.0


def test_ensemble_refuses_mismatched_members(tmp_path):
    a = member(tmp_path / "a", [[1, 0], [0, 1]], [[1, 0]], [0])
    b = member(tmp_path / "b", [[1, 0], [0, 1]], [[1, 0]], [0])
    (b / "classes.json").write_text(json.dumps(["x", "y"]))
    with pytest.raises(UserError, match=r"/b: predicted other test rows or classes"):
        ensemble([a, b], tmp_path / "out")
    with pytest.raises(UserError, match=r"at least two"):
        ensemble([a], tmp_path / "out")
