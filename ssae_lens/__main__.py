"""``python -m ssae_lens ...`` is the ``ssae-lens`` command line (e.g. under ``torchrun``)."""

from ssae_lens.cli import main

if __name__ == "__main__":
    main()
