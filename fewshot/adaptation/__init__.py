"""Adaptation: a trained encoder plus one fitted head on new classes, saved as one classifier file
(``adapt``, ``update`` through ``partial_fit``, ``FewShotClassifier.predict``)."""
