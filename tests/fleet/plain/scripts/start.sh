#!/bin/bash
# ApplicationStart: the new build in the old one's place, in the background
# (the book's `nohup java -jar ... &`), its pid kept for the next stop.
set -eu
dir=/home/ec2-user/app/plain
cp "$dir/zip/app.jar" "$dir/app.jar"
nohup java -Dspring.profiles.active=real -Dserver.port=8080 -jar "$dir/app.jar" \
    >"$dir/nohup.out" 2>&1 </dev/null &
echo $! >"$dir/app.pid"
