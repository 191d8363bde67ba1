"""OOD detection: detectors (fit, then score), ODIN's metrics, and the tune-on-validation protocol."""
