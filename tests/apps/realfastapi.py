"""A FastAPI app with pydantic models on asyncpg, against PostgreSQL named by
libpq's PG* variables, which asyncpg reads too (tests/test_real_apps.py; the
test creates the table)."""

from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field


class Item(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    price: float = Field(gt=0)


class Stored(Item):
    id: int


@asynccontextmanager
async def lifespan(app):
    app.state.pool = await asyncpg.create_pool(min_size=1, max_size=4)
    yield
    await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


@app.post("/items", status_code=201)
async def create(item: Item, request: Request) -> Stored:
    row = await request.app.state.pool.fetchrow(
        "INSERT INTO items (name, price) VALUES ($1, $2) RETURNING id", item.name, item.price
    )
    return Stored(id=row["id"], **item.model_dump())


@app.get("/items/{item_id}")
async def read(item_id: int, request: Request) -> Stored:
    row = await request.app.state.pool.fetchrow("SELECT id, name, price FROM items WHERE id = $1", item_id)
    if row is None:
        raise HTTPException(status_code=404, detail="no such item")
    return Stored(**dict(row))
