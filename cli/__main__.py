"""`python -m comfyui_flux2.cli`, as `python -m comfyui_flux2`."""
import sys

from .app import main

sys.exit(main())
