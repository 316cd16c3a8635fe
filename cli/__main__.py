"""``python -m gpunet.cli``: the same as the ``gpunet`` command."""

from . import app

if __name__ == "__main__":
    app(prog_name="gpunet")
