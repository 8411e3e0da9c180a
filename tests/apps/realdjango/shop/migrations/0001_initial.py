from django.db import migrations, models


def stock(apps, schema_editor):
    Item = apps.get_model("shop", "Item")
    Item.objects.bulk_create([Item(name="pen", stock=5), Item(name="ink", stock=1), Item(name="pad", stock=3)])


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Item",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100, unique=True)),
                ("stock", models.IntegerField()),
            ],
        ),
        migrations.RunPython(stock, migrations.RunPython.noop),
    ]
