from django.contrib import admin
from django.urls import path

from realdjango.shop import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("items", views.items),
    path("page", views.page),
    path("buy/<int:item_id>", views.buy),
    path("upload", views.upload),
]
