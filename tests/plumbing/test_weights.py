import os

import pytest
import torch

from featcache.plumbing.errors import DataError
from featcache.plumbing.weights import misfit, read_tensors


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



def test_misfit_names_missing_unexpected_and_other_shaped_tensors():
    own = {"0.weight": torch.zeros(4, 3), "0.bias": torch.zeros(4), "1.bias": torch.zeros(2)}
    assert misfit(own, dict(own)) == ""
    other = {"0.weight": torch.zeros(5, 3), "0.bias": torch.zeros(5), "extra": torch.zeros(1)}
    assert misfit(own, other) == ("1 missing (1.bias); 1 unexpected (extra); 2 of another shape "
                                  "(0.bias [5] in the file, [4] here, 0.weight [5, 3] in the file, [4, 3] here)")
