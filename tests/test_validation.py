"""Unit tests of the shared argument checks in normfield.core.validation."""

import pytest
import torch

from normfield.core.validation import check_device
from normfield.errors import NormfieldError

HAS_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("value", ["cpu", torch.device("cpu")])
def test_check_device_cpu(value):
    assert check_device("device", value) == "cpu"
    dev = check_device("device", value, as_torch=True)
    assert isinstance(dev, torch.device) and dev.type == "cpu"


@pytest.mark.parametrize("name", ["device", "--device"])
@pytest.mark.parametrize("value", ["tpu", "gpu", "cuda:x", "cudafoo", "mps", "", None, 0, torch.device("meta")])
def test_check_device_refuses_other_devices(name, value):
    with pytest.raises(NormfieldError, match="must be cpu or cuda") as e:
        check_device(name, value)
    assert e.value.argument == name and str(e.value).startswith(name)


@pytest.mark.parametrize("value", ["cuda", "cuda:0", "cuda:1"])
def test_check_device_cuda_format_without_availability_check(value):
    # a device checked on behalf of remote workers: the format only
    assert check_device("--device", value, check_available=False) == value


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present, so cuda is valid here")
@pytest.mark.parametrize("name, hint", [("device", "device='cpu'"), ("--device", "--device cpu")])
def test_check_device_cuda_absent(name, hint):
    with pytest.raises(NormfieldError, match="no CUDA device is available") as e:
        check_device(name, "cuda")
    assert e.value.argument == name and hint in str(e.value)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_check_device_cuda_present():
    assert check_device("device", "cuda:0") == "cuda:0"
    assert check_device("device", torch.device("cuda", 0), as_torch=True) == torch.device("cuda:0")
