"""Keep sphinx-autodoc2's static analysis inside the package and the standard library.

autodoc2 walks every class's ancestors to list inherited members (which the book hides). For
`StageTrainer(transformers.Trainer)` that makes astroid parse transformers' and torch's sources:
over a minute of a build that otherwise takes seconds. Third-party modules are refused to astroid,
so their classes stay names (rendered, not followed).
"""
import sys

from astroid.exceptions import AstroidImportError
from astroid.manager import AstroidManager

_ast_from_module_name = AstroidManager.ast_from_module_name


def _local_only(self, modname, *args, **kwargs):
    top = (modname or "").split(".")[0]
    if top and top != "lifealign" and top not in sys.stdlib_module_names:
        raise AstroidImportError(f"{modname}: not analysed for the API reference (third-party)")
    return _ast_from_module_name(self, modname, *args, **kwargs)


def setup(app):
    AstroidManager.ast_from_module_name = _local_only
    return {"parallel_read_safe": True, "parallel_write_safe": True}
