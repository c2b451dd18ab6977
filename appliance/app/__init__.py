"""The wiring: one module per stage of the data path, and the processes that run them.

Only this package (and `cli`) knows every edge; the edges (`dicom`, `inference`, `results`,
`store`, `queue`, `web`) know `domain` and never each other. docs/architecture.md maps each
step of the data path to its module here.
"""
