from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=100, unique=True)
    stock = models.IntegerField()

    def __str__(self):
        return self.name
