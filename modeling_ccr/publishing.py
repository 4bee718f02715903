"""Publishing, by the names the package has always offered: the folder checks (``folder_checks``), the
model card (``model_card``) and the Hub upload (``hub_upload``) are modules of their own; import from them
directly to take only what you need (train.py renders the card without the upload code).
"""

from .folder_checks import (
    IncompleteFolderError,
    InvalidRepoIdError,
    PublishError,
    check_eval_results,
    check_metric_folder,
    check_model_folder,
    validate_repo_id,
)
from .hub_upload import (
    AuthenticationError,
    HubUnreachableError,
    MissingTokenError,
    PushResult,
    UnsafeSymlinkError,
    UploadFile,
    plan_model_upload,
    plan_upload,
    push_metric,
    push_model,
    render_metric_card,
)
from .model_card import DEFAULT_TEMPLATE, PAPER, PAPER_URL, model_index, render_model_card

__all__ = [
    "DEFAULT_TEMPLATE", "PAPER", "PAPER_URL", "AuthenticationError", "HubUnreachableError", "IncompleteFolderError",
    "InvalidRepoIdError", "MissingTokenError", "PublishError", "PushResult", "UnsafeSymlinkError", "UploadFile", "check_eval_results",
    "check_metric_folder", "check_model_folder", "model_index", "plan_model_upload", "plan_upload", "push_metric",
    "push_model", "render_metric_card", "render_model_card", "validate_repo_id",
]
