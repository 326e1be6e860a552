# Copyright 2026 The modeling_croc authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Hub model cards for Croc / X-Former models and LoRA adapters, and a `push_to_hub` that writes them."""

import os
import re
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import EntryNotFoundError

try:  # transformers' shared client, tagged with its library name (recent 5.x)
    from transformers.utils.hub import hf_api
except ImportError:  # older releases: a plain client

    def hf_api() -> HfApi:
        return HfApi()


CARD_MARKER = "<!-- model card written by modeling_croc -->"
# Sentence of the placeholder card transformers uploads when a repo has none (replaced by ours when found).
PLACEHOLDER_CARD_SENTENCE = "model that has been pushed on the Hub"
REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PIPELINE_TAG = "image-text-to-text"
PAPERS = {
    "croc": "Croc: Pretraining Large Multimodal Models with Cross-Modal Comprehension (arXiv:2410.14332)",
    "xformer": "X-Former: Unifying Contrastive and Reconstruction Learning for MLLMs (arXiv:2407.13851)",
}

CROC_DESCRIPTION = """\
Croc is a LLaVA-1.5 style vision-language model: a CLIP vision tower, a two-layer MLP projector and a causal
language model, pretrained with an extra *cross-modal comprehension* stage. In that stage most image tokens are
swapped for learnable prompt tokens and the language model learns to rebuild them, which sharpens how it reads
images. At inference Croc is LLaVA-1.5 with one change: the projected image tokens are L2-normalised."""

XFORMER_DESCRIPTION = """\
X-Former is a BLIP-2 style vision-language model whose Q-Former is fused with frozen MAE features by a dual
cross-attention block, so that the visual queries carry both contrastive (CLIP) and reconstruction (MAE)
information. Stage 1 trains the Q-Former and fusion block; stage 2 feeds the fused queries to a frozen language
model through a linear projection."""

USAGE_TEMPLATE = """\
```python
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo_id}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
```

With the `modeling_croc` package installed (`import modeling_croc` registers the classes), `trust_remote_code` is
not needed; without it, the modelling code shipped in this repository is used."""

ADAPTER_USAGE_TEMPLATE = """\
```python
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

base = AutoModelForImageTextToText.from_pretrained("{base_model}", trust_remote_code=True)
model = PeftModel.from_pretrained(base, "{repo_id}")
processor = AutoProcessor.from_pretrained("{base_model}", trust_remote_code=True)
# or: base.load_adapter("{repo_id}"); or model.merge_and_unload() for a plain model
```"""


def looks_like_repo_id(name) -> bool:
    """Whether `name` reads as a Hub repo id (`owner/name`) rather than a local folder.

    Args:
        name: a model's `name_or_path`, or `None`.
    """
    return bool(name) and REPO_ID_PATTERN.match(str(name)) is not None and not os.path.exists(str(name))


def architecture_lines(config) -> list[str]:
    """Bullet lines describing the sizes in a Croc or X-Former config (best effort, for the card).

    Args:
        config: a `CrocConfig` or `XFormerConfig`, or `None`.
    """
    if config is None:
        return []
    lines = []
    vision = getattr(config, "vision_config", None)
    text = getattr(config, "text_config", None)
    if vision is not None:
        lines.append(
            f"- vision tower: `{vision.model_type}`, {vision.num_hidden_layers} layers, width {vision.hidden_size}, "
            f"{vision.image_size} px images"
        )
    if getattr(config, "model_type", None) == "croc":
        lines.append(f"- image tokens per image: {config.num_image_tokens} (L2-normalised: "
                     f"{config.normalize_image_features})")
    if getattr(config, "num_query_tokens", None):
        lines.append(f"- Q-Former queries: {config.num_query_tokens}")
    if text is not None:
        lines.append(
            f"- language model: `{text.model_type}`, {text.num_hidden_layers} layers, width {text.hidden_size}, "
            f"vocabulary {text.vocab_size}"
        )
    return lines


def model_card(
    repo_id: str | None = None,
    config=None,
    base_model: str | None = None,
    tags: list[str] | None = None,
    license: str | None = None,
    notes: str | None = None,
) -> ModelCard:
    """The model card (YAML metadata + text) of a Croc or X-Former model repository.

    Args:
        repo_id (`str`, *optional*): where the model lives; used in the title and loading snippet.
        config (*optional*): the model's `CrocConfig` / `XFormerConfig`; chooses the description and lists sizes.
        base_model (`str`, *optional*): Hub id of the model this one was converted or fine-tuned from.
        tags (`list[str]`, *optional*): extra Hub tags.
        license (`str`, *optional*): license identifier for the metadata (left out when not given).
        notes (`str`, *optional*): a free Markdown paragraph appended under "Notes" (e.g. the training data).
    """
    model_type = getattr(config, "model_type", "croc")
    is_generator = model_type == "croc" or getattr(config, "text_config", None) is not None
    all_tags = [model_type, "vision-language", "custom_code", *(tags or [])]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG if is_generator else None,
        base_model=base_model,
        license=license,
        tags=list(dict.fromkeys(all_tags)),
    )
    title = repo_id or ("Croc" if model_type == "croc" else "X-Former")
    description = CROC_DESCRIPTION if model_type == "croc" else XFORMER_DESCRIPTION
    sections = [f"# {title}", CARD_MARKER, description]
    if base_model:
        sections.append(f"Derived from [`{base_model}`](https://huggingface.co/{base_model}).")
    sections += ["## How to load", USAGE_TEMPLATE.format(repo_id=repo_id or "path/to/this/folder")]
    details = architecture_lines(config)
    if details:
        sections += ["## Architecture", "\n".join(details)]
    if notes:
        sections += ["## Notes", notes]
    sections += ["## Reference", PAPERS.get(model_type, PAPERS["croc"])]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def adapter_card(
    base_model: str | None,
    repo_id: str | None = None,
    tags: list[str] | None = None,
    license: str | None = None,
    notes: str | None = None,
) -> ModelCard:
    """The model card of a LoRA adapter for a Croc (or X-Former) base model (`library_name: peft`).

    Args:
        base_model (`str`, *optional*): Hub id (or path) of the base model the adapter applies to.
        repo_id (`str`, *optional*): where the adapter lives; used in the title and loading snippet.
        tags (`list[str]`, *optional*): extra Hub tags.
        license (`str`, *optional*): license identifier for the metadata (left out when not given).
        notes (`str`, *optional*): a free Markdown paragraph appended under "Training" (data, hyper-parameters, loss).
    """
    data = ModelCardData(
        library_name="peft",
        pipeline_tag=PIPELINE_TAG,
        base_model=base_model,
        license=license,
        tags=list(dict.fromkeys(["croc", "lora", "peft", "vision-language", *(tags or [])])),
    )
    base = base_model or "path/to/base/model"
    sections = [
        f"# {repo_id or 'Croc LoRA adapter'}",
        CARD_MARKER,
        f"A LoRA adapter for the Croc vision-language model [`{base}`]. Only the language model's attention and MLP "
        "projections carry low-rank updates (and, when trained, the multi-modal projector is stored in full); the "
        "vision tower is the base model's.",
        "## How to load",
        ADAPTER_USAGE_TEMPLATE.format(base_model=base, repo_id=repo_id or "path/to/this/adapter"),
    ]
    if notes:
        sections += ["## Training", notes]
    sections += ["## Reference", PAPERS["croc"]]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def card_is_replaceable(card: ModelCard | None) -> bool:
    """A card we may overwrite: none, transformers' placeholder, or one this package wrote.

    Args:
        card (`ModelCard`, *optional*): the card found in the repository, or `None`.
    """
    return card is None or CARD_MARKER in card.content or PLACEHOLDER_CARD_SENTENCE in card.content


def remote_model_card(repo_id: str, token=None) -> ModelCard | None:
    """The README.md of a Hub repository, or `None` when it has none (or the Hub is offline).

    Args:
        repo_id (`str`): the repository.
        token (`str` or `bool`, *optional*): Hub token.
    """
    try:
        return ModelCard.load(repo_id, token=token)
    except EntryNotFoundError:
        return None


def write_card_if_missing(folder, card: ModelCard, overwrite: bool = False) -> bool:
    """Write `card` to `folder/README.md` unless a card we must keep is there. Returns whether it was written.

    Args:
        folder (`str` or `os.PathLike`): the saved model or adapter folder.
        card (`ModelCard`): the card to write.
        overwrite (`bool`, *optional*, defaults to `False`): also replace a card written by someone else.
    """
    path = Path(folder) / "README.md"
    if path.exists() and not overwrite and not card_is_replaceable(ModelCard.load(path)):
        return False
    card.save(path)
    return True


def upload_folder_to_hub(
    folder,
    repo_id: str,
    commit_message: str = "Upload with modeling_croc",
    commit_description: str | None = None,
    token=None,
    revision: str | None = None,
    create_pr: bool = False,
    skip_readme: bool = False,
    only: set[str] | None = None,
):
    """Upload every file under `folder` to `repo_id` in one commit (`HfApi.create_commit`).

    Args:
        folder (`str` or `os.PathLike`): local folder to upload.
        repo_id (`str`): an existing Hub repository.
        commit_message (`str`, *optional*): commit title.
        commit_description (`str`, *optional*): commit body.
        token (`str` or `bool`, *optional*): Hub token.
        revision (`str`, *optional*): branch to commit to (created if missing).
        create_pr (`bool`, *optional*, defaults to `False`): open a pull request instead of committing.
        skip_readme (`bool`, *optional*, defaults to `False`): leave the repository's README.md untouched.
        only (`set[str]`, *optional*): upload only these paths (relative to `folder`, POSIX separators).
    """
    root = Path(folder)
    operations = []
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_file() and (only is None or name in only) and not (skip_readme and name == "README.md"):
            operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)))
    api = hf_api()
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
    return api.create_commit(
        repo_id=repo_id,
        operations=operations,
        commit_message=commit_message,
        commit_description=commit_description,
        token=token,
        revision=revision,
        create_pr=create_pr,
    )


def file_timestamps(folder) -> dict[str, float]:
    """Modification time of every file under `folder`, by POSIX path relative to it (empty if it does not exist).

    Args:
        folder (`str` or `os.PathLike`): the folder to scan.
    """
    root = Path(folder)
    if not root.is_dir():
        return {}
    return {path.relative_to(root).as_posix(): path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()}


class CrocHubMixin:
    """Gives `push_to_hub` (and `save_pretrained(..., push_to_hub=True)`) a real model card.

    Mixed into `CrocPreTrainedModel` / `XFormerPreTrainedModel` before `PreTrainedModel`. The upload carries the
    weights, `config.json` (with `auto_map`), the modelling code files and a README.md with `library_name:
    transformers`, `pipeline_tag: image-text-to-text` and `base_model`. A card already on the Hub is kept unless it is
    transformers' placeholder or one this package wrote earlier.
    """

    def hub_base_model(self) -> str | None:
        """The Hub id this model was loaded from, used as `base_model` in the card (`None` for local folders)."""
        name = getattr(self, "name_or_path", None) or getattr(self.config, "_name_or_path", None)
        return name if looks_like_repo_id(name) else None

    def hub_model_card(self, repo_id: str | None = None, base_model: str | None = None, tags=None) -> ModelCard:
        """This model's card.

        Args:
            repo_id (`str`, *optional*): the target repository.
            base_model (`str`, *optional*): overrides `hub_base_model()`.
            tags (`list[str]`, *optional*): extra tags (the model's `model_tags` are always added).
        """
        all_tags = [*(getattr(self, "model_tags", None) or []), *(tags or [])]
        return model_card(repo_id, self.config, base_model or self.hub_base_model(), all_tags)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token=None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size="50GB",
        tags: list[str] | None = None,
        base_model: str | None = None,
    ) -> str:
        """Save the model (weights, config with `auto_map`, code) with its model card and upload it in one commit.

        Args:
            repo_id (`str`): target repository (`owner/name`), created if missing.
            commit_message (`str`, *optional*): defaults to "Upload model".
            commit_description (`str`, *optional*): commit body.
            private (`bool`, *optional*): visibility of a newly created repository.
            token (`str` or `bool`, *optional*): Hub token.
            revision (`str`, *optional*): branch to push to.
            create_pr (`bool`, *optional*, defaults to `False`): open a pull request instead of committing.
            max_shard_size (`int` or `str`, *optional*, defaults to `"50GB"`): weight shard size.
            tags (`list[str]`, *optional*): extra tags for the card.
            base_model (`str`, *optional*): `base_model` of the card (default: the Hub id the model came from).
        """
        repo_id = hf_api().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            return self._upload_with_card(
                folder, repo_id, commit_message or "Upload model", commit_description, token, revision, create_pr,
                tags, base_model,
            )

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
        """`PreTrainedModel.save_pretrained`; with `push_to_hub=True` the folder also gets a card and is uploaded.

        Args:
            save_directory (`str` or `os.PathLike`): output folder.
            args: passed on to `PreTrainedModel.save_pretrained`.
            push_to_hub (`bool`, *optional*, defaults to `False`): also upload the folder (to `repo_id`, default:
                the folder's name).
            kwargs: passed on, except the Hub options `repo_id`, `commit_message`, `commit_description`, `private`,
                `token`, `revision`, `create_pr`, `tags` and `base_model`.
        """
        if not push_to_hub:
            return super().save_pretrained(save_directory, *args, **kwargs)
        hub_options = {
            key: kwargs.pop(key, None)
            for key in ("repo_id", "commit_message", "commit_description", "private", "token", "revision", "tags",
                        "base_model")
        }
        create_pr = kwargs.pop("create_pr", False)
        before = file_timestamps(save_directory)
        super().save_pretrained(save_directory, *args, token=hub_options["token"], **kwargs)
        if not kwargs.get("is_main_process", True):
            return None
        repo_id = hub_options["repo_id"] or Path(save_directory).name
        repo_id = hf_api().create_repo(
            repo_id, private=hub_options["private"], token=hub_options["token"], exist_ok=True
        ).repo_id
        saved = {name for name, stamp in file_timestamps(save_directory).items() if before.get(name) != stamp}
        return self._upload_with_card(
            save_directory, repo_id, hub_options["commit_message"] or "Upload model",
            hub_options["commit_description"], hub_options["token"], hub_options["revision"], create_pr,
            hub_options["tags"], hub_options["base_model"], only=saved | {"README.md"},
        )

    def _upload_with_card(
        self, folder, repo_id, commit_message, commit_description, token, revision, create_pr, tags, base_model,
        only=None,
    ):
        """Write our card into `folder` unless the Hub repo has a card to keep, then upload the folder.

        Args:
            folder: the saved model folder.
            repo_id (`str`): the (existing) target repository.
            commit_message (`str`): commit title.
            commit_description (`str`, *optional*): commit body.
            token (`str` or `bool`, *optional*): Hub token.
            revision (`str`, *optional*): branch to push to.
            create_pr (`bool`): open a pull request instead of committing.
            tags (`list[str]`, *optional*): extra card tags.
            base_model (`str`, *optional*): `base_model` of the card.
            only (`set[str]`, *optional*): upload only these files of `folder`.
        """
        keep_remote_card = not card_is_replaceable(remote_model_card(repo_id, token=token))
        if not keep_remote_card:
            write_card_if_missing(folder, self.hub_model_card(repo_id, base_model, tags))
        return upload_folder_to_hub(
            folder, repo_id, commit_message, commit_description, token, revision, create_pr,
            skip_readme=keep_remote_card, only=only,
        )


def write_adapter_card(folder, base_model: str | None, repo_id: str | None = None, notes: str | None = None) -> None:
    """Replace the generic README.md PEFT writes next to a saved adapter with a Croc adapter card.

    Args:
        folder (`str` or `os.PathLike`): the folder `PeftModel.save_pretrained` wrote.
        base_model (`str`, *optional*): Hub id (or path) of the base model.
        repo_id (`str`, *optional*): where the adapter will live.
        notes (`str`, *optional*): Markdown about the training run.
    """
    path = Path(folder) / "README.md"
    existing = ModelCard.load(path) if path.exists() else None
    card = adapter_card(base_model, repo_id, notes=notes)
    if existing is not None and existing.data.get("tags"):
        # keep PEFT's library tags, not its `base_model:adapter:<local path>` tag (the card states `base_model`)
        kept = [tag for tag in existing.data.tags if not str(tag).startswith("base_model:")]
        card.data.tags = list(dict.fromkeys([*card.data.tags, *kept]))
    card.save(path)


def push_adapter_to_hub(
    peft_model,
    repo_id: str,
    base_model: str | None = None,
    notes: str | None = None,
    private: bool | None = None,
    token=None,
    commit_message: str = "Upload LoRA adapter",
    revision: str | None = None,
    create_pr: bool = False,
):
    """Save a PEFT adapter with a Croc adapter card (`library_name: peft`, `base_model`) and upload it.

    Args:
        peft_model: a `peft.PeftModel` around a Croc (or X-Former) model.
        repo_id (`str`): target repository, created if missing.
        base_model (`str`, *optional*): Hub id of the base model; also written to `adapter_config.json`'s
            `base_model_name_or_path` (default: the id recorded there, when it is a Hub id).
        notes (`str`, *optional*): Markdown about the training run, for the card.
        private (`bool`, *optional*): visibility of a newly created repository.
        token (`str` or `bool`, *optional*): Hub token.
        commit_message (`str`, *optional*): commit title.
        revision (`str`, *optional*): branch to push to.
        create_pr (`bool`, *optional*, defaults to `False`): open a pull request instead of committing.
    """
    peft_config = peft_model.peft_config[peft_model.active_adapter]
    if base_model is not None:
        peft_config.base_model_name_or_path = base_model
    elif looks_like_repo_id(peft_config.base_model_name_or_path):
        base_model = peft_config.base_model_name_or_path
    repo_id = hf_api().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        peft_model.save_pretrained(folder)
        keep_remote_card = not card_is_replaceable(remote_model_card(repo_id, token=token))
        if not keep_remote_card:
            write_adapter_card(folder, base_model, repo_id, notes)
        return upload_folder_to_hub(
            folder, repo_id, commit_message, token=token, revision=revision, create_pr=create_pr,
            skip_readme=keep_remote_card,
        )


__all__ = [
    "CrocHubMixin",
    "adapter_card",
    "file_timestamps",
    "model_card",
    "push_adapter_to_hub",
    "upload_folder_to_hub",
    "write_adapter_card",
    "write_card_if_missing",
]
