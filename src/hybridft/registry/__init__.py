"""The registry: MLflow runs and versions with their lineage, identity and roles, gates,
approvals, policies bound to models, the audit log, the data catalog and model cards.

A run directory enters it through ``tracking`` (``log_train_run``) and ``registration``
(``evaluate_run``, ``register_version``); the data a run reads through ``data_approval``."""

from hybridft.faces import lazy_face

# public name -> the module that defines it, imported on first use: importing one light module
# of the package does not import its heavy neighbours
# (registration: torch, for evaluation)
_EXPORTS = {
    "User": "access",
    "current_user": "access",
    "require": "access",
    "approve": "approvals",
    "AuditRecord": "audit",
    "append_audit": "audit",
    "default_audit_path": "audit",
    "exclusive_lock": "audit",
    "Binding": "bindings",
    "bind_policy": "bindings",
    "bound_policy": "bindings",
    "policy_for": "bindings",
    "read_audit": "audit",
    "DatasetEntry": "catalog",
    "get_dataset": "catalog",
    "list_datasets": "catalog",
    "register_dataset": "catalog",
    "review_dataset": "catalog",
    "ModelRef": "client",
    "Registry": "client",
    "UnapprovedData": "data_approval",
    "catalog_run_data": "data_approval",
    "require_approved": "data_approval",
    "GateVerdict": "gates",
    "Promotion": "gates",
    "alias_version": "gates",
    "evaluate_gate": "gates",
    "promote": "gates",
    "describe_lineage": "lineage",
    "lineage_tree": "lineage",
    "build_card": "model_card",
    "log_card": "model_card",
    "write_card": "model_card",
    "Policy": "policy",
    "load_policy": "policy",
    "evaluate_run": "registration",
    "register_version": "registration",
    "RunRecord": "tracking",
    "log_eval": "tracking",
    "log_train_run": "tracking",
    "register_run": "tracking",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_face(__name__, _EXPORTS)
