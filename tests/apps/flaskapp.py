from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/")
def index():
    return "Hello from Flask"


@app.post("/upload")
def upload():
    f = request.files["file"]
    data = f.read()
    return jsonify(name=f.filename, size=len(data), field=request.form.get("field"), head=data[:16].hex())


@app.get("/json")
def as_json():
    return jsonify(args=request.args.to_dict(), path=request.path)
