"""Where a pulled model comes from: the files of a Hugging Face or ModelScope
repository (listed with `huggingface_hub` / `modelscope_hub`, with their
sizes and sha256), or one `.gguf` behind a plain URL, turned into a plan of
files to fetch (src/core/model_pull.py fetches them).

Which files: the one named (`file`), the `.gguf` whose name holds the
quantization asked for (`Q4_K_M`), the repository's only `.gguf` or its
Q4_K_M one, or, for a repository without `.gguf` files, the whole model
folder (vLLM / MLX), without the weights in formats neither engine reads
when safetensors are there.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Optional
from urllib.parse import unquote, urlsplit

from .exceptions import (BadGatewayError, InvalidRequestError, NotFoundError,
                         PermissionDeniedError, ServiceError)

MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
DEFAULT_QUANTIZATION = "Q4_K_M"  # what Ollama and llama-server take when none is named
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$")
# weights in formats neither vLLM nor MLX loads, skipped when safetensors are there
_OTHER_WEIGHTS = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ot", ".gguf")


@dataclass(frozen=True)
class RemoteFile:
    path: str  # where it goes, relative to the model folder (a .gguf: its file name)
    url: str
    size: Optional[int]
    sha256: Optional[str]


@dataclass(frozen=True)
class PullPlan:
    model_id: str
    source: str  # "huggingface" | "modelscope" | "url"
    origin: str  # the repository or URL, for people to read
    files: tuple[RemoteFile, ...]
    folder: bool  # a model folder; else one .gguf file
    headers: tuple[tuple[str, str], ...] = ()  # sent to the hub's own host only

    @property
    def total(self) -> Optional[int]:
        sizes = [f.size for f in self.files]
        return None if None in sizes else sum(sizes)  # type: ignore[arg-type]


def check_model_id(name: str, param: str = "name") -> str:
    if not MODEL_ID.fullmatch(name) or ".." in name:
        raise InvalidRequestError(f"'{name}' is not a model name this server can store: "
                                  f"letters, digits, '.', '_' and '-', up to 128.", param=param,
                                  code="invalid_model_name")
    return name


def safe_relative(path: str) -> str:
    """A repository's file path, refused when it would leave the model folder."""
    parts = PurePosixPath(path).parts
    if (not parts or path.startswith("/") or "\\" in path
            or any(p in ("..", ".", "") or p.startswith(".") for p in parts)):
        raise InvalidRequestError(f"The repository lists a file path this server will not "
                                  f"write: '{path}'.", param="repo", code="unsafe_path")
    return str(PurePosixPath(*parts))


def plan_huggingface(repo: str, revision: Optional[str], file: Optional[str],
                     quantization: Optional[str], name: Optional[str], endpoint: str,
                     token: Optional[str]) -> PullPlan:
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    _check_repo(repo)
    api = HfApi(endpoint=endpoint, token=token or False)
    try:
        info = api.model_info(repo, revision=revision or "main", files_metadata=True, timeout=30)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise NotFoundError(f"Hugging Face has no repository '{repo}'"
                            f"{f' at revision {revision}' if revision else ''} (or it is "
                            f"private: set HF_TOKEN).", param="repo",
                            code="repository_not_found") from exc
    except GatedRepoError as exc:
        raise PermissionDeniedError(f"Hugging Face refused access to '{repo}': accept its "
                                    f"terms on the hub and set HF_TOKEN.", param="repo") from exc
    except HfHubHTTPError as exc:
        raise _hub_error("Hugging Face", endpoint, exc) from exc
    except Exception as exc:  # the transport's own errors: no route, refused, timed out
        raise _unreachable("Hugging Face", endpoint, exc) from exc
    commit = info.sha or revision or "main"  # pinned: every file comes from one commit
    listing = [(s.rfilename, s.size if s.lfs is None else s.lfs.size,
                s.lfs.sha256 if s.lfs is not None else None) for s in info.siblings or []]
    chosen, folder = _choose(listing, file, quantization, repo)
    files = tuple(RemoteFile(path if folder else PurePosixPath(path).name,
                             hf_hub_url(repo, path, revision=commit, endpoint=endpoint), size, sha)
                  for path, size, sha in chosen)
    headers = (("Authorization", f"Bearer {token}"),) if token else ()
    return PullPlan(_model_id(name, chosen, folder, repo), "huggingface", repo, files, folder,
                    headers)


def plan_modelscope(repo: str, revision: Optional[str], file: Optional[str],
                    quantization: Optional[str], name: Optional[str], endpoint: str,
                    token: Optional[str]) -> PullPlan:
    from modelscope_hub import HubApi
    from modelscope_hub.errors import (HubError, NetworkError, NotExistError,
                                       NotFoundError as MsNotFound)

    _check_repo(repo)
    api = HubApi(endpoint=endpoint, token=token)
    try:
        listing = [(f.path, f.size, f.sha256) for f in
                   api.list_repo_files(repo, "model", revision=revision or "master")
                   if f.type != "tree"]
    except (NotExistError, MsNotFound) as exc:
        raise NotFoundError(f"ModelScope has no model '{repo}'.", param="repo",
                            code="repository_not_found") from exc
    except NetworkError as exc:
        raise _unreachable("ModelScope", endpoint, exc) from exc
    except HubError as exc:
        raise BadGatewayError(f"ModelScope ({endpoint}) answered with an error for "
                              f"'{repo}': {exc}") from exc
    chosen, folder = _choose(listing, file, quantization, repo)
    files = tuple(RemoteFile(path if folder else PurePosixPath(path).name,
                             api.legacy.get_download_url(repo, "model", path,
                                                         revision or "master"), size, sha)
                  for path, size, sha in chosen)
    headers = (("Authorization", f"Bearer {token}"),) if token else ()
    return PullPlan(_model_id(name, chosen, folder, repo), "modelscope", repo, files, folder,
                    headers)


def plan_url(url: str, name: Optional[str], sha256: Optional[str]) -> PullPlan:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError(f"url '{url}' is not an http:// or https:// URL.", param="url")
    file_name = unquote(PurePosixPath(parts.path).name)
    if not file_name.endswith(".gguf"):
        raise InvalidRequestError("A URL pull fetches one .gguf file: the URL's path must end "
                                  "in .gguf.", param="url")
    if _SPLIT.search(file_name):
        raise InvalidRequestError("Split GGUF files (-00001-of-0000N) are not supported; "
                                  "choose a single-file model.", param="url")
    model_id = check_model_id(name or file_name[:-len(".gguf")],
                              "name" if name else "url")
    size = _remote_size(url)
    return PullPlan(model_id, "url", url,
                    (RemoteFile(f"{model_id}.gguf", url, size, sha256.lower() if sha256 else None),),
                    folder=False)


def _remote_size(url: str) -> Optional[int]:
    """The file's length from a HEAD (redirects followed); None when the server
    does not say. A URL that answers with an error is refused here."""
    import urllib3

    try:
        response = urllib3.request("HEAD", url, timeout=urllib3.Timeout(15.0),
                                   retries=urllib3.Retry(total=2, redirect=10))
    except urllib3.exceptions.HTTPError as exc:
        raise BadGatewayError(f"{urlsplit(url).netloc} cannot be reached: {exc}") from exc
    if response.status == 404:
        raise NotFoundError(f"{url} does not exist (404).", param="url", code="file_not_found")
    if response.status in (401, 403):
        raise PermissionDeniedError(f"{urlsplit(url).netloc} refused {url} ({response.status}).",
                                    param="url")
    if response.status >= 400:
        raise BadGatewayError(f"{urlsplit(url).netloc} answered {response.status} for {url}.")
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


# choosing the files -----------------------------------------------------------------------
Listing = list[tuple[str, Optional[int], Optional[str]]]  # path, size, sha256


def _choose(listing: Listing, file: Optional[str], quantization: Optional[str],
            repo: str) -> tuple[Listing, bool]:
    ggufs = [entry for entry in listing if entry[0].endswith(".gguf")
             and "mmproj" not in PurePosixPath(entry[0]).name.lower()]
    if file:
        match = [entry for entry in listing if entry[0] == file]
        if not match:
            raise NotFoundError(f"'{repo}' has no file '{file}'"
                                f"{_choices(ggufs)}.", param="file", code="file_not_found")
        safe_relative(file)
        return _single(match[0]), False
    if quantization:
        wanted = quantization.lower()
        match = [e for e in ggufs if wanted in PurePosixPath(e[0]).name.lower()]
        if not match:
            raise NotFoundError(f"'{repo}' has no .gguf file of quantization "
                                f"'{quantization}'{_choices(ggufs)}.", param="quantization",
                                code="file_not_found")
        if len(match) > 1:
            raise InvalidRequestError(f"Several files of '{repo}' match '{quantization}'"
                                      f"{_choices(match)}: give file.", param="quantization")
        return _single(match[0]), False
    if ggufs:
        preferred = [e for e in ggufs if DEFAULT_QUANTIZATION.lower() in e[0].lower()]
        if len(ggufs) == 1 or len(preferred) == 1:
            return _single((ggufs if len(ggufs) == 1 else preferred)[0]), False
        raise InvalidRequestError(f"'{repo}' holds several .gguf files{_choices(ggufs)}: give "
                                  f"file or quantization.", param="quantization")
    for path, _, _ in listing:  # a listing that points outside the folder is refused whole
        if path.startswith("/") or ".." in PurePosixPath(path).parts:
            safe_relative(path)
    has_safetensors = any(e[0].endswith(".safetensors") for e in listing)
    files = [e for e in listing if not e[0].startswith(".")
             and not (has_safetensors and (e[0].endswith(_OTHER_WEIGHTS)
                                           or e[0].startswith("original/")))]
    if not any(PurePosixPath(e[0]).name == "config.json" for e in files):
        raise InvalidRequestError(f"'{repo}' holds neither a .gguf file nor a model folder "
                                  f"(config.json).", param="repo")
    for path, _, _ in files:
        safe_relative(path)
    return files, True


def _single(entry: tuple[str, Optional[int], Optional[str]]) -> Listing:
    if _SPLIT.search(entry[0]):
        raise InvalidRequestError("Split GGUF files (-00001-of-0000N) are not supported; "
                                  "choose a single-file quantization.", param="file")
    return [entry]


def _choices(entries: Listing) -> str:
    names = [PurePosixPath(e[0]).name for e in entries[:12]]
    return f" (it has: {', '.join(names)})" if names else " (it has no .gguf files)"


def _model_id(name: Optional[str], chosen: Listing, folder: bool, repo: str) -> str:
    if name:
        return check_model_id(name)
    default = repo.split("/")[-1] if folder else PurePosixPath(chosen[0][0]).name[:-len(".gguf")]
    return check_model_id(default, "repo")


def _check_repo(repo: str) -> None:
    if not REPO_ID.fullmatch(repo) or ".." in repo:
        raise InvalidRequestError(f"repo '{repo}' is not a repository id like 'owner/name'.",
                                  param="repo")


def _hub_error(hub: str, endpoint: str, exc: Exception) -> ServiceError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return PermissionDeniedError(f"{hub} ({endpoint}) refused the request ({status}): "
                                     f"check the token (HF_TOKEN).", param="repo")
    return BadGatewayError(f"{hub} ({endpoint}) answered {status or 'with an error'}: {exc}")


def _unreachable(hub: str, endpoint: str, exc: Exception) -> ServiceError:
    return BadGatewayError(f"{hub} cannot be reached at {endpoint}: {exc}. Set the mirror "
                           f"(HF_ENDPOINT / MODELSCOPE_ENDPOINT) if this network needs one.")
