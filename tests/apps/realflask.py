"""A Flask app on SQLAlchemy (with its compiled extensions) and psycopg 3,
against PostgreSQL named by libpq's PG* variables (tests/test_real_apps.py;
the test creates the table)."""

from flask import Flask, jsonify, request
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


# Host, port, user and database come from the environment, as libpq reads them.
engine = create_engine("postgresql+psycopg://", pool_size=4)
app = Flask(__name__)


@app.get("/notes")
def notes():
    with Session(engine) as session:
        found = session.scalars(select(Note).order_by(Note.id)).all()
        return jsonify([{"id": n.id, "text": n.text} for n in found])


@app.post("/notes")
def add_note():
    text = (request.get_json(silent=True) or {}).get("text")
    if not isinstance(text, str) or not 0 < len(text) <= 200:
        return jsonify(error="text must be 1 to 200 characters"), 422
    with Session(engine) as session, session.begin():
        note = Note(text=text)
        session.add(note)
        session.flush()
        return jsonify(id=note.id, text=note.text), 201
