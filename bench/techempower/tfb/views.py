from operator import itemgetter
from random import randint, sample

import orjson
from django.http import HttpResponse
from django.shortcuts import render

from tfb.models import Fortune, World


def _count(request):
    try:
        return min(max(int(request.GET.get("queries", 1)), 1), 500)
    except ValueError:
        return 1


def _json(data):
    return HttpResponse(orjson.dumps(data), content_type="application/json")


def plaintext(request):
    return HttpResponse(b"Hello, World!", content_type="text/plain")


def json(request):
    return _json({"message": "Hello, World!"})


def db(request):
    r = randint(1, 10000)
    return _json({"id": r, "randomNumber": World.objects.get(id=r).randomnumber})


def queries(request):
    worlds = [{"id": r, "randomNumber": World.objects.get(id=r).randomnumber}
              for r in sample(range(1, 10001), _count(request))]
    return _json(worlds)


def fortunes(request):
    found = list(Fortune.objects.values("id", "message"))
    found.append({"id": 0, "message": "Additional fortune added at request time."})
    found.sort(key=itemgetter("message"))
    return render(request, "fortunes.html", {"fortunes": found})


def updates(request):
    worlds = []
    for r in sample(range(1, 10001), _count(request)):
        world = World.objects.get(id=r)
        world.randomnumber = randint(1, 10000)
        worlds.append(world)
    World.objects.bulk_update(worlds, ["randomnumber"])
    return _json([{"id": w.id, "randomNumber": w.randomnumber} for w in worlds])
