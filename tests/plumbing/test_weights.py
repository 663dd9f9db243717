import os

import pytest
import torch

from featcache.plumbing.errors import DataError
from featcache.plumbing.weights import read_tensors


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
