"""Admin API for the knowledge base: list, upload (multipart) and delete documents.

    GET    /api/knowledge/documents                 the agent's documents, files and uploads alike
    POST   /api/knowledge/documents                 multipart/form-data, one or more files (any field name)
    DELETE /api/knowledge/documents/{document_id}   a document and its fragments

Plugin routes are admin-only unless marked public, errors use the server's JSON envelope
(`ApiError`), and the routes are listed in /api/openapi.json from what they declare here. An
upload's type is checked from its file name before its bytes are read, and its size while they
stream in, so a 200 MB file is refused after KNOWLEDGE_MAX_FILE_MB, not after 200 MB sit in
memory; files are indexed one at a time as they arrive, so an upload holds one file in memory at
most. The upload route's body limit is MAX_FILES such files (not MAX_BODY_BYTES), so the server
refuses a larger body up front. A file of another type or whose content cannot be read (binary,
corrupt or encrypted PDF) is refused on its own; the error says which other files were indexed.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import BadHttpMessage
from pydantic import BaseModel

from bot.plugin import Route
from bot.server.errors import ApiError

from .indexer import KnowledgeInputError
from .loaders import SUPPORTED, kind_of

if TYPE_CHECKING:
    from .indexer import DocumentInfo, KnowledgeBase

DOCUMENTS = "/api/knowledge/documents"
CHUNK_BYTES = 64 * 1024
MAX_FILES = 20
PART_OVERHEAD = 16 * 1024  # a part's boundary and headers (its file name), allowed beside each file's bytes


class DocumentOut(BaseModel):
    id: uuid.UUID
    source: str  # the name the model cites: a path relative to the character file or folder, or the file name
    origin: str  # character | folder | upload
    title: str
    path: str | None
    size: int  # bytes of the original file
    fragments: int
    shared: bool
    embedded: bool  # every fragment has a vector (else it is found by full text only, for now)
    indexed_at: int  # ms since the epoch

    @classmethod
    def of(cls, info: DocumentInfo) -> DocumentOut:
        return cls(id=info.id, source=info.source, origin=info.origin, title=info.title, path=info.path,
                   size=info.size, fragments=info.fragments, shared=info.shared, embedded=info.embedded,
                   indexed_at=info.created_at)


class DocumentList(BaseModel):
    documents: list[DocumentOut]


class Deleted(BaseModel):
    deleted: uuid.UUID


class UploadForm(BaseModel):
    """The upload's files, each its own part with a file name (any field name; `file` by convention)."""

    file: list[bytes]


# An upload the route takes, for the OpenAPI document: what a file part looks like, file name included.
UPLOAD_EXAMPLE = {
    "example": {"file": ["# Notes\n\nThe wifi password is on the fridge."]},
    "encoding": {"file": {"contentType": "text/markdown", "headers": {"Content-Disposition": {
        "schema": {"type": "string", "example": 'form-data; name="file"; filename="notes.md"'}}}}},
}


def _noting(error: ApiError, indexed: list[DocumentOut]) -> ApiError:
    """The error, saying which files of the upload were indexed before it."""
    if not indexed:
        return error
    return ApiError(error.status, error.code, f"{error.message} (indexed: {', '.join(d.source for d in indexed)})",
                    details=error.details, headers=error.headers)


# What aiohttp raises for a malformed multipart body: ValueError, or BadHttpMessage for a part's headers.
_MALFORMED = (ValueError, BadHttpMessage)


def _unreadable(error: Exception) -> ApiError:
    """400 saying what aiohttp could not parse (cut short: it may quote a long header)."""
    detail = " ".join(str(getattr(error, "message", "") or error).split())[:200] or type(error).__name__
    return ApiError(400, "NOT_MULTIPART", f"the multipart body cannot be read: {detail}")


async def _next_part(reader: MultipartReader) -> Any:
    try:
        return await reader.next()
    except _MALFORMED as error:
        raise _unreadable(error) from None


async def _chunk(part: BodyPartReader) -> bytes:
    try:
        return await part.read_chunk(CHUNK_BYTES)
    except _MALFORMED as error:
        raise _unreadable(error) from None


async def _release(part: BodyPartReader) -> None:
    try:
        await part.release()
    except _MALFORMED as error:
        raise _unreadable(error) from None


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")


class KnowledgeApi:
    def __init__(self, base: KnowledgeBase) -> None:
        self.base = base

    @property
    def max_bytes(self) -> int:
        return int(self.base.settings.knowledge_max_file_mb * 1_000_000)

    async def list_documents(self, request: web.Request) -> web.Response:
        """The agent's documents: the character's files, the KNOWLEDGE_PATH folder's and uploads."""
        documents = await self.base.list_documents()
        return _json(DocumentList(documents=[DocumentOut.of(d) for d in documents]))

    async def upload_documents(self, request: web.Request) -> web.Response:
        """Upload documents (multipart/form-data, one file per part), indexed one by one as they arrive.

        Their vectors follow in the background: 201 with each document. A file of another type or
        unreadable content is refused on its own (400 once the rest are in); one over
        KNOWLEDGE_MAX_FILE_MB stops the upload there (413). Both errors name the files indexed before.
        A file of the same name as an earlier upload replaces it."""
        indexed: list[DocumentOut] = []
        refused: list[tuple[str, dict[str, str]]] = []  # (error code, detail)
        try:
            async for name, data in self._files(await self._reader(request)):
                if data is None:
                    refused.append(("UNSUPPORTED_FILE_TYPE", {"field": name, "message": f"{name} is not a "
                                                              f"supported type; upload {SUPPORTED} files"}))
                    continue
                try:
                    indexed.append(DocumentOut.of(await self.base.add_upload(name, data)))
                except KnowledgeInputError as error:  # one line naming the file and the fix
                    refused.append(("UNREADABLE_FILE", {"field": name, "message": str(error)}))
        except ApiError as error:
            raise _noting(error, indexed) from None
        if refused:
            details = [detail for _, detail in refused]
            raise _noting(ApiError(400, refused[0][0], "; ".join(d["message"] for d in details), details=details),
                          indexed)
        if not indexed:
            raise ApiError(400, "NO_FILE", "the upload has no file part; send one or more files, e.g. curl -F "
                           "file=@guide.md")
        return _json(DocumentList(documents=indexed), status=201)

    @staticmethod
    async def _reader(request: web.Request) -> MultipartReader:
        if request.content_type != "multipart/form-data":
            raise ApiError(400, "NOT_MULTIPART", "upload files as multipart/form-data (e.g. curl -F "
                           "file=@guide.md); supported types: " + SUPPORTED)
        try:
            return await request.multipart()
        except (ValueError, AssertionError):
            raise ApiError(400, "NOT_MULTIPART", "the multipart body cannot be read (missing boundary?)") from None

    async def _files(self, reader: MultipartReader) -> AsyncIterator[tuple[str, bytes | None]]:
        """(file name, bytes) of each file part, None for the bytes of a file of another type (not
        read); form fields are skipped."""
        files = 0
        while (part := await _next_part(reader)) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "NESTED_MULTIPART", "send each file as its own part, not nested multipart")
            if part.filename is None:
                await _release(part)  # a plain form field: nothing to index
                continue
            files += 1
            if files > MAX_FILES:
                raise ApiError(400, "TOO_MANY_FILES", f"at most {MAX_FILES} files per upload; send the rest in "
                               "another request")
            if kind_of(part.filename) is None:
                await _release(part)
                yield part.filename, None
                continue
            yield part.filename, await self._read_file(part)

    async def _read_file(self, part: BodyPartReader) -> bytes:
        name = part.filename or ""
        data = bytearray()
        while chunk := await _chunk(part):
            data += chunk
            if len(data) > self.max_bytes:
                mb = self.base.settings.knowledge_max_file_mb
                raise ApiError(413, "FILE_TOO_LARGE", f"{name} is larger than KNOWLEDGE_MAX_FILE_MB ({mb:g} MB); "
                               "split it into smaller files")
        return bytes(data)

    async def delete_document(self, request: web.Request) -> web.Response:
        """Delete a document and its fragments.

        A document from a file comes back at the next start while the file is still there."""
        raw = request.match_info["document_id"]
        try:
            document_id = uuid.UUID(raw)
        except ValueError:
            raise ApiError(400, "INVALID_ID", f"{raw!r} is not a document id; GET {DOCUMENTS} lists them") from None
        if not await self.base.delete(document_id):
            raise ApiError(404, "DOCUMENT_NOT_FOUND", f"no document {document_id}; GET {DOCUMENTS} lists them")
        return _json(Deleted(deleted=document_id))


def knowledge_routes(base: KnowledgeBase) -> list[Route]:
    """The admin routes over `base` (admin-only: plugin routes are unless marked public)."""
    api = KnowledgeApi(base)
    mb = base.settings.knowledge_max_file_mb
    return [
        Route("GET", DOCUMENTS, api.list_documents, responses={200: DocumentList}),
        Route("POST", DOCUMENTS, api.upload_documents, body_types=("multipart/form-data",), body=UploadForm,
              body_openapi=UPLOAD_EXAMPLE, responses={201: DocumentList}, max_body_bytes=MAX_FILES * (api.max_bytes + PART_OVERHEAD),
              max_body_reason=f"KNOWLEDGE_MAX_FILE_MB: at most {MAX_FILES} files of {mb:g} MB each"),
        Route("DELETE", DOCUMENTS + "/{document_id}", api.delete_document, responses={200: Deleted},
              errors=(400, 404), path_schemas={"document_id": {"format": "uuid"}}),
    ]
