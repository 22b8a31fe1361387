"""Synthetic scans with exact ground truth (``ghum-pipe synth``).

- ``poses``: random natural poses and facial expressions for the template;
- ``skin``: per-subject colours (skin tone, hair, lips, nails, eyes, shorts);
- ``scanner``: the simulated multi-view depth scanner and Poisson reconstruction;
- ``frames``: random rigid placement and file units / up axis;
- ``generate``: body and close-up scans of a subject (pure core);
- ``mannequin``: a primitive-built body of another topology (``--other-model``);
- ``writers``: scan files and truth files (the click command is ``cli/synth_command.py``);
- ``registrations``: ground-truth registrations for training (``--registrations``).
"""
