"""Declarative routing configuration: `mta apply routing.yaml` and `mta export`.

- spec.py: the document's typed shape and its strict loader (errors name key and line);
- apply.py: reconcile the database with a document in one audited transaction;
- export.py: the database written back as a document that applies as a no-op.
"""

from mta.declarative.apply import Change, apply_document
from mta.declarative.export import export_document, export_yaml
from mta.declarative.spec import Loaded, load_document, load_text

__all__ = ["Change", "Loaded", "apply_document", "export_document", "export_yaml",
           "load_document", "load_text"]
