"""`xlr serve`: the search service over HTTP (FastAPI on uvicorn) and the page that uses it.

Every answer comes from `core/search/service.py`; bad input is a 4xx JSON `{"error": ...}` naming the problem.
Images are served only by (dataset, image id) from a lane's image table: no path in a request reaches the disk.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Annotated

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from xlr_pipeline.core.search.limits import MAX_QUERY_CHARS, MAX_RESULTS, MAX_UPLOAD_BYTES
from xlr_pipeline.core.search.service import (
    SearchError,
    SearchService,
    UploadTooLarge,
    decode_query_image,
)


def create_app(service: SearchService, default_dataset: str) -> FastAPI:
    app = FastAPI(
        title="xlr search",
        summary="Zero-shot cross-lingual image search over the pipeline's trained heads and FAISS indexes",
    )
    page = files("xlr_pipeline.web").joinpath("page.html").read_text("utf-8")

    @app.exception_handler(SearchError)
    def search_error(request: Request, error: SearchError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in error.errors()
        )
        return JSONResponse({"error": problems}, status_code=400)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": f"{request.url.path}: {error.detail}"}, status_code=error.status_code)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page() -> str:
        return page

    @app.get("/api/datasets", summary="Every dataset: its languages and whether it can be searched")
    def datasets() -> dict:
        return {"default": default_dataset, "datasets": service.datasets()}

    @app.get("/api/search", summary="Rank a dataset's indexed images for a text in any language")
    def search(
        q: Annotated[str, Query(description=f"the query text (at most {MAX_QUERY_CHARS} characters)")],
        dataset: Annotated[str | None, Query(description="dataset name (default: the default dataset)")] = None,
        lang: Annotated[
            str | None, Query(description="language of the captions shown (default: the training language)")
        ] = None,
        k: Annotated[int, Query(description=f"results, 1–{MAX_RESULTS}")] = 10,
    ) -> dict:
        return service.search(q, dataset or default_dataset, lang, k).as_dict()

    @app.post("/api/similar", summary="Images like an uploaded one, with the captions and tags that describe it best")
    def similar(
        file: Annotated[UploadFile, File(description=f"an image file (at most {MAX_UPLOAD_BYTES:,} bytes)")],
        dataset: Annotated[str | None, Form()] = None,
        lang: Annotated[str | None, Form()] = None,
        k: Annotated[int, Form()] = 10,
    ) -> dict:
        data = file.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise UploadTooLarge(f"{file.filename}: over {MAX_UPLOAD_BYTES:,} bytes")
        image = decode_query_image(data, file.filename or "upload")
        return service.similar(image, dataset or default_dataset, lang, k).as_dict()

    @app.get(
        "/api/image/{dataset}/{image_id}",
        summary="An image listed in a dataset's image table",
        response_class=FileResponse,
    )
    def image(dataset: str, image_id: str) -> FileResponse:
        return FileResponse(service.image_path(dataset, image_id))

    return app
