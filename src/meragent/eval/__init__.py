"""Evaluation: the official MER metrics, synonym grouping for MER-OV, and reports.

- :mod:`.six` - six-class accuracy, WAF, per-class scores, confusion matrix, MER2023 score.
- :mod:`.ov` - MER-OV set accuracy / recall / average under a grouping (MER2024 Eq. 4-8).
- :mod:`.grouping` - the grouper registry (``identity``, ``cached``, ``embedding``, ``llm``,
  ``wheel``); :mod:`.embedding_grouper`, :mod:`.llm_grouper` hold the heavier ones.
- :mod:`.wheel` - the MER2025 emotion-wheel metric.
- :mod:`.parsing` / :mod:`.files` - list strings and CSV files; :mod:`.report` - tables, plots.
- :mod:`.calibrate` - fitting the embedding grouper's threshold to the GPT grouping.

Nothing is imported here, so ``import meragent.eval.ov`` stays light.
"""
