"""Which `pretrained` values count as hub requests: decided by syntax, so serving never needs the file."""

from __future__ import annotations

import pytest

from trainflow.errors import ConfigError, UriError
from trainflow.models.components.pretrained_source import asks_for_hub
from trainflow.models.components.timm_backbone import TIMMBackbone


@pytest.mark.parametrize("value", [True, "hf-hub:timm/resnet18.a1_in1k", "HF_HUB:org/name", "timm/resnet18.a1_in1k",
                                   "https://huggingface.co/timm/resnet18/resolve/main/model.safetensors",
                                   "http://host/weights.pth", "ftp://host/weights.pth"])
def test_hub_ids_and_urls_are_hub_requests(value) -> None:
    assert asks_for_hub(value)
    with pytest.raises(ConfigError, match=r"^model\.net\.pretrained=.* would download weights .* pass a file instead"):
        TIMMBackbone.check_config("model.net", {"pretrained": value})


@pytest.mark.parametrize("value", [False, None, "", "/abs/weights.pth", "weights/resnet.ckpt", "./timm/resnet.pth",
                                   "timm/resnet.pth", "~/w.safetensors", r"C:\weights\resnet.pth",
                                   "runs:/0123abcd/checkpoints/best",
                                   "models:/digits/3", "mlflow-artifacts:/1/abc/artifacts/w.pt",
                                   "file:///tmp/w.pt", "s3://bucket/w.pt", "dbfs:/mnt/w.pt"])
def test_files_and_mlflow_uris_are_not(value) -> None:
    assert not asks_for_hub(value)
    TIMMBackbone.check_config("model.net", {"pretrained": value})


def test_a_network_with_a_weights_file_that_is_not_here_still_builds_and_serves_its_logged_weights() -> None:
    """Evaluate and the served model rebuild the network from the logged config, without the file, then load
    the logged weights: it answers as the trained network does. Only fit's start reads `pretrained`."""
    import torch

    torch.manual_seed(0)
    trained = TIMMBackbone("test_resnet", num_classes=3).eval()
    rebuilt = TIMMBackbone("test_resnet", num_classes=3, pretrained="/gone/after/training.pth")
    rebuilt.load_state_dict(trained.state_dict())
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(images), trained(images))
    with pytest.raises(UriError, match=r"^model\.net\.pretrained: no such file or folder: /gone/after/training\.pth"):
        rebuilt.load_pretrained()
