"""The nanoGPT text model: training, export and evaluation (torch), over the torch-free `format`.

Importing this package never imports torch; `edgewatch.model.format` is what the sidecar uses.
"""
