"""Model packages: what the study found, kept to score the next mammograms (`mammo-ray score`).

A package is a folder: `pipeline.skops` (the fitted scaling, selection, balancing, classifier, calibration map
and shift reference, in skops's format, which loads without running code), `package.json` (the extractor's
identity, the threshold, the training data's digests, the out-of-fold performance, each file's sha256 and the
package's own id) and its model card (`card.md`, `card.json`). It holds no path: a copied folder works.
"""
