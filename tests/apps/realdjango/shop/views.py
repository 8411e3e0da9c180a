"""orjson is imported with the views, which Django imports at the first
request: a lazy import of a module that refuses sub-interpreters."""

import hashlib

import orjson
from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from realdjango.shop.models import Item


def as_json(data, status=200):
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json")


def items(request):
    return as_json([{"id": i.id, "name": i.name, "stock": i.stock} for i in Item.objects.order_by("id")])


def page(request):
    return render(request, "shop/items.html", {"items": Item.objects.order_by("name")})


@csrf_exempt
@require_POST
def buy(request, item_id):
    with transaction.atomic():
        item = Item.objects.select_for_update().get(id=item_id)
        if item.stock < 1:
            return as_json({"error": "sold out", "name": item.name}, status=409)
        item.stock -= 1
        item.save(update_fields=["stock"])
    return as_json({"id": item.id, "stock": item.stock})


@csrf_exempt
@require_POST
def upload(request):
    f = request.FILES["file"]
    data = f.read()
    return as_json({"name": f.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                    "field": request.POST.get("field")})
