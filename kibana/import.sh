#!/usr/bin/env bash
# Import kibana/saved_objects.ndjson (data view `images`, saved search, dashboard) into Kibana
# through its saved objects API; existing copies are overwritten, so it can be run again.
#
#   kibana/import.sh
#
# Environment (each falls back to the line of the same name in ./.env, then to the default):
#   ELASTIC_PASSWORD   password of KIBANA_USER (required)
#   KIBANA_USER        user to import as (elastic)
#   KIBANA_URL         Kibana (http://localhost:$KIBANA_PORT, KIBANA_PORT 5601)
#   WEBAPP_URL         the web app as your browser reaches it; thumbnails in Discover load
#                      from $WEBAPP_URL/thumbnails/<id>.webp (http://localhost:$WEBAPP_PORT)
#
# The password reaches curl through a config on its standard input: it is never printed and
# never appears on a command line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
objects="$here/saved_objects.ndjson"
# The web app address written in the file; replaced by WEBAPP_URL.
template_base="http://localhost:8000"

# from_dotenv NAME: the value of NAME in $root/.env (last assignment, quotes removed).
from_dotenv() {
    [ -f "$root/.env" ] || return 0
    sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$root/.env" | tail -n 1 \
        | sed -e 's/[[:space:]]*$//' -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'\$/\1/"
}

setting() {  # setting NAME DEFAULT
    local value="${!1:-}"
    [ -n "$value" ] || value=$(from_dotenv "$1")
    printf '%s' "${value:-$2}"
}

password=$(setting ELASTIC_PASSWORD "")
if [ -z "$password" ]; then
    echo "import.sh: set ELASTIC_PASSWORD (in the environment or in .env)" >&2
    exit 2
fi
user=$(setting KIBANA_USER elastic)
kibana_url=$(setting KIBANA_URL "http://localhost:$(setting KIBANA_PORT 5601)")
webapp_url=$(setting WEBAPP_URL "http://localhost:$(setting WEBAPP_PORT 8000)")
kibana_url=${kibana_url%/}
webapp_url=${webapp_url%/}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The API wants a file whose name ends in .ndjson.
upload="$work/saved_objects.ndjson"
# Literal replacement: the quoted pattern and replacement are not patterns.
content=$(cat "$objects")
printf '%s\n' "${content//"$template_base/thumbnails/"/"$webapp_url/thumbnails/"}" > "$upload"

# Escape \ and " for curl's config syntax.
esc_user=${user//\\/\\\\}
esc_user=${esc_user//\"/\\\"}
esc_password=${password//\\/\\\\}
esc_password=${esc_password//\"/\\\"}

echo "Importing $(wc -l < "$upload" | tr -d ' ') saved objects into $kibana_url as $user" \
     "(thumbnails from $webapp_url)"
status=0
code=$(printf 'user = "%s:%s"\n' "$esc_user" "$esc_password" \
    | curl -sS -K - -o "$work/response" -w '%{http_code}' \
        -X POST "$kibana_url/api/saved_objects/_import?overwrite=true" \
        -H 'kbn-xsrf: true' \
        --form "file=@$upload") || status=$?
if [ "$status" -ne 0 ]; then
    echo "import.sh: could not reach Kibana at $kibana_url (is the stack up and healthy?" \
         "docker compose ps)" >&2
    exit 1
fi
if [ "$code" != 200 ] || ! grep -q '"success":true' "$work/response"; then
    echo "import.sh: Kibana answered HTTP $code:" >&2
    cat "$work/response" >&2
    echo >&2
    exit 1
fi
count=$(sed -n 's/.*"successCount":\([0-9]*\).*/\1/p' "$work/response")
echo "Imported ${count:-all} objects. Kibana: $kibana_url/app/dashboards (dashboard" \
     "\"imgsearch: index overview\"), Discover: saved search \"imgsearch: indexed images\"."
