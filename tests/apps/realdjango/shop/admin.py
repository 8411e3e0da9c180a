from django.contrib import admin

from realdjango.shop.models import Item

admin.site.register(Item)
