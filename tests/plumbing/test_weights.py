import os

import pytest
import torch

from featcache.plumbing.errors import DataError
from featcache.plumbing.weights import load_into, read_tensors


class Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling would create the marker file
        return (open, (self.marker, "w"))


class MyError(DataError):
    pass


def test_tensors_load_and_everything_else_is_one_error(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2), "step": 3}, good)
    assert read_tensors(str(good))["step"] == 3
    marker = tmp_path / "ran"
    torch.save({"w": Boom(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(MyError, match="Unsupported global.*pickled objects"):
        read_tensors(str(tmp_path / "evil.pt"), MyError)
    assert not os.path.exists(marker)
    (tmp_path / "text.pt").write_text("not a torch file")
    with pytest.raises(MyError, match=r"refused: not a checkpoint of tensors only \(Unsupported operand"):
        read_tensors(str(tmp_path / "text.pt"), MyError, "checkpoint")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(DataError, match="holds a list"):
        read_tensors(str(tmp_path / "list.pt"))


def test_a_state_for_another_model_is_one_error_naming_what_does_not_fit():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    other = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)).state_dict()
    with pytest.raises(MyError, match=r"^w.pt: the checkpoint does not fit this model: 3 of another shape "
                                      r"\(0.bias \[5\] in the file, \[4\] here, 0.weight \[5, 3\] in the file, "
                                      r"\[4, 3\] here\); try again$"):
        load_into(model, other, "w.pt", MyError, "checkpoint", "try again")
    with pytest.raises(MyError, match=r"1 missing \(1.bias\); 1 unexpected \(extra\)"):
        load_into(model, {**{k: v for k, v in model.state_dict().items() if k != "1.bias"}, "extra": torch.ones(1)},
                  "w.pt", MyError)
    with pytest.raises(MyError, match="holds a list"):
        load_into(model, [1, 2], "w.pt", MyError)
    good = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    load_into(model, good, "w.pt", MyError)
    assert float(model[1].bias.detach()[0]) == 0.5
