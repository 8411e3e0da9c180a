"""A FastAPI app: pydantic validation, so its core refuses sub-interpreters."""

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Item(BaseModel):
    name: str
    price: float


@app.get("/")
async def root():
    return {"message": "Hello from FastAPI"}


@app.post("/items")
async def create(item: Item):
    return {"name": item.name, "price": item.price}
