// A consumer of the performer package: includes the umbrella header and prints the version.
#include <iostream>

#include <performer/performer.hpp>

int main() {
  std::cout << "performer " << performer::version_string << "\n";
  return 0;
}
