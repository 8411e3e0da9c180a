from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


def index(request):
    return HttpResponse("Hello from Django")


@csrf_exempt
def upload(request):
    f = request.FILES["file"]
    data = f.read()
    return JsonResponse({"name": f.name, "size": len(data), "field": request.POST.get("field"), "head": data[:16].hex()})


urlpatterns = [path("", index), path("upload", upload)]
