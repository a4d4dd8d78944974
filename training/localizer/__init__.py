"""The product localizer: an anchor-free (CenterNet/FCOS-style) detector trained on synthetic
composites of catalog packshots, exported to an ONNX artifact of kind ``"localizer"``.

Modules: :mod:`.cutout` (packshot → RGBA cutout by background removal), :mod:`.synth` (cluttered
scenes with known boxes), :mod:`.model` (feature taps + head), :mod:`.targets` (heatmap / box
targets and losses), :mod:`.train` (loop, export), :mod:`.evaluate` (localization metrics),
:mod:`.cli` (``sku-train-localizer``). Post-processing lives in :mod:`service.localize`.
"""
