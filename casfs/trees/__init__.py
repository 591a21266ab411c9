"""REAPI trees: Directory messages checked and verified (``model``), the one encoding of
a directory (``encode``), fetching and caching them (``source``, ``smallfiles``), what an
ActionCache entry shows (``actions``), and trees on the local disk (``local``)."""
