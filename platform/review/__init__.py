"""Review of a scored cohort by a technician (``somnray review``, ``docs/review.md``).

* :mod:`.queue` — rank nights by expected errors and epochs by uncertainty, write the review
  folder (queue, the queued nights' signals, EDF+ marks for EDFbrowser);
* :mod:`.corrections` — import a technician's corrected hypnograms (EDF+ annotations or CSV);
* :mod:`.agreement` — model–technician agreement on the reviewed epochs;
* :mod:`.export` — the corrected nights as a labelled prepared dataset for training;
* :mod:`.simulate` — what a review is worth: a simulated technician on nights whose truth is known.

The files and their layout are :mod:`somnray.serve.review_files`'s, shared with the review page.
"""
