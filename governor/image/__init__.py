"""Images: OCI image layouts (and plain directories) unpacked into a content-addressed
layer store under the state directory (issue #19).

Layering: :mod:`oci` parses and checks the layout's JSON documents and references (pure),
:mod:`source` reads a layout or a directory and verifies blobs, :mod:`unpack` unpacks one
layer safely with whiteouts in overlayfs form, reading it through :mod:`stream` within the
:mod:`limits` of the configuration's ``[images]``, :mod:`store` keeps layers and image
metadata, :mod:`inuse` the running containers' records, :mod:`cli` the commands.
"""
