// consumer.c as C++ (tests/install_check.sh builds it under C++11..20).
#include "consumer.c"
