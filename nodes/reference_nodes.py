"""Flux2ReferenceURL: a reference image given by an https URL or a Runware imageUUID."""
from __future__ import annotations

from ..flux2.errors import InputError
from ..flux2.reference_urls import parse_reference
from .common import CATEGORY, REFERENCE_TYPE


class Flux2ReferenceURL:
    DESCRIPTION = ("A reference image by URL, for Flux2Edit's reference sockets. Runware receives the URL (or "
                   "a Runware imageUUID) as is and BFL as input_image, with nothing downloaded or uploaded; "
                   "local backends fetch the image once (https, public hosts, at most 20 MiB).")
    CATEGORY = CATEGORY
    RETURN_TYPES = (REFERENCE_TYPE,)
    RETURN_NAMES = ("reference",)
    FUNCTION = "reference"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"url": ("STRING", {
            "default": "", "multiline": False,
            "tooltip": "An https URL of a PNG, JPEG or WebP image, or the imageUUID of an image stored at Runware."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, url=None):
        # ComfyUI calls this for every node before it runs any: a malformed URL stops the queue before a
        # paid call. Reachability and content are checked before the call that uses the reference.
        if url is None:         # fed by a link: its value exists only at run time, checked then
            return True
        try:
            parse_reference(url)
        except InputError as exc:
            return str(exc)
        return True

    def reference(self, url):
        return (parse_reference(url),)
