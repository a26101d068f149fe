"""A corrupt image is named by its file; the message carries no Python object's repr."""

from __future__ import annotations

import pytest

from trainflow.data.images import BadImage, open_image


@pytest.mark.parametrize("data", [b"not an image at all", b"\x89PNG\r\n\x1a\n truncated"])
def test_a_bad_image_message_is_plain_words(data: bytes) -> None:
    with pytest.raises(BadImage) as caught:
        open_image(data)
    message = str(caught.value)
    assert message and "0x" not in message and "BytesIO" not in message and "<" not in message, message
