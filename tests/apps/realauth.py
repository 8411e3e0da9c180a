"""A Flask app that hashes passwords with bcrypt and argon2 and signs tokens
with an Ed25519 key through PyJWT and cryptography (tests/test_real_apps.py).
The key is PEM in TURBO_TEST_SIGNING_KEY, so every worker signs alike."""

import os

import argon2
import bcrypt
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from flask import Flask, jsonify, request

KEY = load_pem_private_key(os.environ["TURBO_TEST_SIGNING_KEY"].encode(), password=None)
PUBLIC = KEY.public_key()
argon = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
app = Flask(__name__)


@app.post("/hash")
def hash_password():
    password = request.get_json()["password"].encode()
    return jsonify(bcrypt=bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode(),
                   argon2=argon.hash(password))


@app.post("/login")
def login():
    body = request.get_json()
    password = body["password"].encode()
    ok = bcrypt.checkpw(password, body["bcrypt"].encode())
    try:
        ok = ok and argon.verify(body["argon2"], password)
    except argon2.exceptions.VerifyMismatchError:
        ok = False
    if not ok:
        return jsonify(error="wrong password"), 401
    return jsonify(token=jwt.encode({"sub": body["user"]}, KEY, algorithm="EdDSA"))


@app.get("/me")
def me():
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    try:
        claims = jwt.decode(token, PUBLIC, algorithms=["EdDSA"])
    except jwt.InvalidTokenError as e:
        return jsonify(error=str(e)), 401
    return jsonify(user=claims["sub"])
